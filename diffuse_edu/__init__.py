"""diffuse-edu: the helper library of a course that builds image diffusion from scratch.

One module per concept, in lesson order:

=====================  ==========================================================
lesson                 module
=====================  ==========================================================
00 welcome             ``config`` (scale, data folder), ``data``, ``doctor``
01 forward process     ``schedules``, ``forward_process``
every lesson           ``exercises`` (checkers), ``plotting``, ``report``, ``runner``
=====================  ==========================================================
"""

from diffuse_edu import config, data, exercises, forward_process, plotting, report, schedules
from diffuse_edu.config import Scale, by_scale, get_scale, set_data_dir, set_scale

__version__ = "0.1.0"

__all__ = [
    "Scale", "by_scale", "config", "data", "exercises", "forward_process", "get_scale",
    "plotting", "report", "schedules", "set_data_dir", "set_scale",
]
