"""flowcore: the thin core every method package stands on.

Modules: ``schedules``, ``prediction``, ``sampling``, ``guidance``, ``adapters``, ``layout``,
``attention``, ``images``, ``metrics``, ``io``, ``testing``, ``bench``, ``cli``, ``seeding`` and the toy world
``toy``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
