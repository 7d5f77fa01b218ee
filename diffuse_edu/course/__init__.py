"""The course's tooling: figures (``plotting``), recorded metrics (``report``), the headless
``runner``, the student-notebook ``builder``, the environment ``doctor``, the ``bench``mark and
the command line (``cli``). Nothing in the library imports it."""
