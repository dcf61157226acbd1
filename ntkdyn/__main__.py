"""``python -m ntkdyn ...``: the ``ntkdyn`` command (:func:`ntkdyn.cli.console`)."""

from ntkdyn.cli import console

if __name__ == "__main__":
    console()
