"""Root conftest: kept minimal. The image-test options (--x8-profile, --lmp-image, ...) come from a plugin."""

pytest_plugins = ["x8manager.qemu.pytest_plugin"]
