"""
cli.py: what the kit's command lines share: the one-line error and the Markdown table.

    import cli
    cli.fail("no trace at x.jsonl: pass runs/<name>/traces/<env>/<task>__NN.jsonl")  # stderr, exit status 2
    print(cli.markdown_table(["env", "progression %"], [["crafter", "4.55 ± 0.00"]]))
    cli.clip(reply, 2000)   # the first 2000 characters, then "[... N more characters not shown]"
"""
import sys


def fail(message):
    """Bad input or an unusable model: one line naming the fix, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def clip(text, n, mark="\n[... {} more characters not shown]"):
    """`text` (None: "") whole if it has at most n characters, else its first n and `mark` ({}: how many were left out)."""
    text = text or ""
    return text if len(text) <= n else text[:n] + mark.format(len(text) - n)


def markdown_table(head, body):
    """A Markdown table: a header row, then one row per list of cells (a "|" inside a cell is escaped)."""
    row = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return "\n".join([row(head), "|" + " --- |" * len(head)] + [row(cells) for cells in body])
