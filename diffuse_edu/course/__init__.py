"""The course's tooling: figures (``plotting``), recorded metrics (``report``), the headless
``runner`` and the README's table of full-scale ``results``, the student-notebook ``builder``, the
classroom ``grade``r, the environment ``doctor``, the ``bench``mark and the command line (``cli``).
Nothing in the library imports it."""
