"""The `zt` command line: typer sub-apps that parse flags and call into `zt`. No logic lives here."""
