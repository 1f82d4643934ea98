"""Offline tools for data scientists: training, evaluation, reports, plots and what-if replays.

Fitting (scikit-learn's HistGradientBoosting) runs OpenMP threads. By default their idle threads
spin, which on a shared or busy machine burns CPU without doing work: notebook 03's model fit took
15.6 s of CPU spinning vs 2.4 s passive (300 users x 21 days, 2 cores, load ~10; 1.6 s on one
thread). The offline tools therefore ask for passive waiting unless ``OMP_WAIT_POLICY`` is already
set; it takes effect when this package is imported before scikit-learn's OpenMP runtime starts (the
CLI and the notebooks do).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
