"""What runs inferd beyond one process: the Ray Serve application (`inferd.deploy.ray`) and the deployment bundle
(`inferd.deploy.bundle`: systemd, launchd, Docker, nginx and Kubernetes/KServe files rendered from the server's settings)."""
