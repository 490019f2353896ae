"""Course helpers a notebook uses beside `check()`: answers graded against the kernel's evidence.

    from kplab.course import answer
    answer("03-iptables/which-endpoint", "KUBE-SEP-...")
"""

from kplab.course.answers import answer

__all__ = ["answer"]
