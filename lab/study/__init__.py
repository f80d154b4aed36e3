"""`fedcmr study`: the paper's whole protocol as one resumable grid of runs (cells), one
results table and a report (lab/study/report.py). Runs on a researcher's or coordinator's
machine: CDS cells through the centralised trainer, FL cells through the Flower app."""
