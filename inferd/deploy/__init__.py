"""What runs inferd beyond one process: the Ray Serve application (`inferd.deploy.ray`)."""
