"""Run the rnnkit command in-process as a user would: (exit code, stdout, stderr), argparse's exits included."""
import contextlib
import io

from rnnkit.cli import main


def rnnkit(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(map(str, argv)))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()
