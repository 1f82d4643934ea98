"""Offline tools for data scientists: training, evaluation, reports, plots and what-if replays."""
