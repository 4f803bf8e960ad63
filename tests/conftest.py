import os

# Headless pygame for render_mode="human" tests; set before pygame is ever imported.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
