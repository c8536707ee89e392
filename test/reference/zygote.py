"""Runs the reference scripts of one test process without paying their imports each time.

Importing torch, transformers' models and PEFT takes about 7.5 s, more than most reference scripts then compute, and
a test file runs up to a dozen of them, one after another. This server imports them once, then runs each script in a
fork of itself: every run starts from the state of a fresh interpreter that has just imported them (module globals,
seeds and torch settings are the child's own and die with it), as `python script.py` would.

    python zygote.py DIR

It makes a named pipe, DIR/request, then the file DIR/ready.
A request, written to the pipe, is one JSON object {"script", "args", "stdout", "stderr"} (the last two: files for
the script's output); the reply is the script's exit status, in the file DIR/reply (written whole, then renamed).
The server ends, removing DIR, when its standard input closes: when the test process that started it ends.
"""
import json
import os
import runpy
import shutil
import sys
import threading
import traceback


def run(request):
    """In the forked child: the script as __main__, with its own argv, path, output files and exit status."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path.insert(0, os.path.dirname(script))
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:  # sys.exit("message"), as the interpreter reports it
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def end_with_stdin(directory):
    sys.stdin.read()
    shutil.rmtree(directory, ignore_errors=True)
    os._exit(0)


def main():
    directory = sys.argv[1]
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import BertModel, DistilBertModel, GPT2Model, LlamaModel, Qwen2Model  # noqa: F401

    requests, reply = os.path.join(directory, "request"), os.path.join(directory, "reply")
    os.mkfifo(requests)
    threading.Thread(target=end_with_stdin, args=(directory,), daemon=True).start()
    open(os.path.join(directory, "ready"), "w").close()
    while True:
        with open(requests) as f:
            request = json.loads(f.read())
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run(request)
        _, wait_status = os.waitpid(pid, 0)
        with open(reply + ".tmp", "w") as f:
            f.write(str(os.waitstatus_to_exitcode(wait_status)))
        os.rename(reply + ".tmp", reply)


if __name__ == "__main__":
    main()
