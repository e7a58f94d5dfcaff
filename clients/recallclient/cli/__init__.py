"""recallctl: register, revoke, check and introspect tokens from the shell.

Usage: recallctl [--target HOST[:PORT]] [--json] COMMAND [options]

COMMAND is register, revoke, check, introspect, stats or watch (the Watch
stream, one line per event, until Ctrl-C or --count events), or one of the
token lifecycle (cli/lifecycle.py): rotate (a refresh token, with reuse
detection), cutoff (the kill switch), audit (the audit trail, --follow until
Ctrl-C or --count records) and trace (one token's audit records).

The server is --target, else $RECALL_TARGET, else 127.0.0.1:50051. --target
and --json may come before or after the command name. With --json each
result is one JSON object on its own line; otherwise a short human line.

The exit codes (common.EXIT_CODES) follow.
"""

from .commands import main
from .common import DEFAULT_TARGET, EXIT_CODES, TARGET_ENV, iso

__doc__ += "\n" + EXIT_CODES

__all__ = ["DEFAULT_TARGET", "TARGET_ENV", "iso", "main"]
