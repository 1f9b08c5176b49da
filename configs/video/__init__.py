"""Video configs (clips (B, T, H, W, C)); each module has get_config()."""
