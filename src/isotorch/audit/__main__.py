"""``python -m isotorch.audit --markdown docs/audit.md [--json audit.json]``: write the primitive audit table."""

from isotorch.audit._table import main

if __name__ == "__main__":
    raise SystemExit(main())
