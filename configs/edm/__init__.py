"""Published-style configs; each module has get_config()."""
