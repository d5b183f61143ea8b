"""The exception tree of fabtier: one root, user mistakes apart from failures of the machine."""


class FabtierError(Exception):
    """Root of every error fabtier raises on purpose."""


class UserError(FabtierError):
    """A mistake of the user's (configuration, SQL, arguments); the message says the fix."""


class ConfigError(UserError):
    """A configuration key has a bad name or value."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        text = f"config key {key}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class SqlError(UserError):
    """A SQL statement was refused or failed; carries the database's own message."""


class RetryableError(FabtierError):
    """A failure that may pass (a store or broker that is down); the caller should retry."""

    retry_after: float = 1.0


class DurabilityError(FabtierError):
    """Data could not be made durable; the process must not acknowledge anything more."""
