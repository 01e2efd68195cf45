"The user's IPython set-up: profile directory, config files, exec_lines/files, extensions and startup files (issue 8)."

def load_config():
    "The traitlets config the shell is built with (none yet)."
    return None

def init_profile(ip):
    "Run what the profile asks for before the first cell (nothing yet)."
