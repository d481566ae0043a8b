"""Audits (Simic credit, seed 003 §5.3-5.4): exact full-retrain Shapley credit for a few seeds of a
recorded run, set beside the policy's decisions and the online probe, validated approximations
(Monte Carlo, leave-one-out), and the `audits` table of labels a critic can learn from."""

from esper_lab.audit.oracle import Audit, agreement, audit_run, run_audit, write_audit
from esper_lab.audit.protocol import Candidate, Protocol, from_run, train
from esper_lab.audit.shapley import error_curve, exact_shapley, leave_one_out, monte_carlo_shapley

__all__ = [
    "Audit",
    "Candidate",
    "Protocol",
    "agreement",
    "audit_run",
    "error_curve",
    "exact_shapley",
    "from_run",
    "leave_one_out",
    "monte_carlo_shapley",
    "run_audit",
    "train",
    "write_audit",
]
