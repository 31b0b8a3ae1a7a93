#!/usr/bin/env python
"""Distil a YOLO student from a YOLO teacher. `python train_distill.py --help` lists every option."""

import sys

import distill  # noqa: F401  (offline defaults before ultralytics loads)
from distill.cli import main

if __name__ == "__main__":
    sys.exit(main())
