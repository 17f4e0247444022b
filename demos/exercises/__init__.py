"""Exercises that students do and the lab grades: one module per exercise (demos.exercises.framework
says what an exercise is), gathered here in the order a class takes them."""

from __future__ import annotations

from demos.exercises.fast_path import FAST_PATH
from demos.exercises.framework import Criterion, Exercise, Grade
from demos.exercises.ftp_nodes import FTP_NODES
from demos.exercises.periodic_interval import PERIODIC_INTERVAL
from demos.exercises.planted_fault import PLANTED_FAULT
from demos.exercises.step_through import STEP_THROUGH
from demos.exercises.two_failures import TWO_FAILURES

EXERCISES: dict[str, Exercise] = {e.name: e for e in (FAST_PATH, FTP_NODES, TWO_FAILURES, PLANTED_FAULT,
                                                  STEP_THROUGH, PERIODIC_INTERVAL)}

__all__ = ["EXERCISES", "Criterion", "Exercise", "Grade"]
