"""The one user-facing error type. Anything a user can get wrong (a flag, a YAML field, a model name,
hardware that cannot fit) raises UserError; the CLI prints it to stderr and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix. `field` names the flag or YAML path, `hint` says how to fix it."""

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.field}: " if self.field else ""
        fix = f"\n  fix: {self.hint}" if self.hint else ""
        return f"error: {where}{self.message}{fix}"
