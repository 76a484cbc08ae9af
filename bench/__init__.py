"""memmesh benchmarks, run as their own command and never as part of the test suite.

Usage: ``python -m bench FAMILY [options]`` (``python -m bench --help`` lists the families).
Each family prints progress to stderr and ONE JSON document to stdout. Every figure carries
its raw numbers and a ratio against a baseline measured in the same run, because absolute
numbers vary between machines.

A family is a module that defines ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args, progress) -> dict``; register it in ``bench.__main__.FAMILIES``.
"""
