"""Human play opens a pygame window (headless here): without the "human" extra this folder is skipped."""

from tests.utils import skip_unless_extra

skip_unless_extra("human", "pygame")
