from tests.netns.fixtures import kernel_release

__all__ = ["kernel_release"]
