"""The mathematics of diffusion (lessons 01-15): imports only torch.

``schedules`` and ``forward_process`` (lesson 01), ``reverse_process`` (02), ``prediction``
(conversions between eps, x0, v; 02 and 07), ``objectives`` (what a network is trained to do, flow
matching included: 12), ``denoisers`` (one D(x; sigma) view of any model) and ``samplers`` (07, the
flow's Euler sampler: 12), ``guidance`` (08), ``editing`` (11), ``distillation`` (14), ``score``
(scores, Langevin dynamics, the reverse SDE and the probability-flow ODE with its likelihood: 15).
"""
