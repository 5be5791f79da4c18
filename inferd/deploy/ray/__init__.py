"""inferd on Ray Serve (the `inferd[ray]` extra): a model repository as a Serve application.

`app.build_app` makes the application, `app.write_config` the Serve config file that deploys it, `run.run` deploys
it on a running cluster. This package imports Ray only in those modules: `settings.keep_ray_on_loopback` must run
before Ray is imported.
"""

from inferd.deploy.ray.settings import RaySettings

__all__ = ["RaySettings"]
