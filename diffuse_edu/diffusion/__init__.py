"""The mathematics of diffusion (lessons 01, 02, 07, and later 08, 12): imports only torch.

``schedules`` and ``forward_process`` (lesson 01), ``reverse_process`` (02), ``prediction``
(conversions between eps, x0, v; 02 and 07), ``objectives`` (what a network is trained to do),
``denoisers`` (one D(x; sigma) view of any model) and ``samplers`` (07).
"""
