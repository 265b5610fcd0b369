"""Shared assertions of the command-line tests."""

from privatenet.cli import main


def fails(capsys, argv, *needles):
    """``privatenet ARGV`` exits 2 with exactly one error line (after any '[cached]'/'[run]'
    stage progress lines) that contains every needle; returns that line."""
    capsys.readouterr()
    code = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith(("[cached]", "[run]"))]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("privatenet: error:"), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]
