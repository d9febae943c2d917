"""(in progress)"""


def convert(*a, **k):
    raise NotImplementedError
