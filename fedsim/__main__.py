"""``python -m fedsim``: the ``fedsim`` command line (the console script's entry point)."""

from fedsim.cli import main

if __name__ == "__main__":
    main()
