"""The server and client tests need the "serve" extra: without it this folder is skipped."""

from tests.utils import skip_unless_extra

skip_unless_extra("serve", "openenv.core", "websockets.sync.client")
