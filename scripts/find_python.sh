#!/bin/sh
# Prints the Python interpreter the virtual environment is made with (the Makefile's
# venv rule). TensorFlow 2.15 has wheels for Python 3.9, 3.10 and 3.11 only.
#
#   sh scripts/find_python.sh            python3 if it is 3.9-3.11, else the first of
#                                        python3.11, python3.10, python3.9 on PATH
#   sh scripts/find_python.sh PYTHON     that interpreter, if it is 3.9-3.11
#
# When none fits it prints one line starting with "error:" on stdout (make stops with
# that line) and exits 1. Plain POSIX sh: no command besides the interpreters is run.

NEEDED="TensorFlow 2.15 needs Python 3.9, 3.10 or 3.11"
HOW="install one (e.g. apt install python3.11, brew install python@3.11, pyenv install 3.11), or name one: make PYTHON=/path/to/python3.11"
NEWLINE='
'

# The first line of "$1 --version" ("Python 3.11.7"); empty if it does not run.
version_of() {
    if output=$("$1" --version 2>&1); then
        echo "${output%%"$NEWLINE"*}"
    fi
}

suitable() {
    case "$(version_of "$1")" in
        "Python 3.9."*|"Python 3.10."*|"Python 3.11."*) return 0 ;;
        *) return 1 ;;
    esac
}

# "python3 is Python 3.12.3", "python3 is not on PATH", ...
describe() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "$1 is not on PATH"
        return
    fi
    version=$(version_of "$1")
    echo "$1 is ${version:-there but does not run}"
}

if [ -n "$1" ]; then
    if suitable "$1"; then
        command -v "$1"
        exit 0
    fi
    echo "error: $NEEDED, but PYTHON=$(describe "$1"): $HOW"
    exit 1
fi

for candidate in python3 python3.11 python3.10 python3.9; do
    if command -v "$candidate" >/dev/null 2>&1 && suitable "$candidate"; then
        command -v "$candidate"
        exit 0
    fi
done
echo "error: $NEEDED, but $(describe python3) and no python3.11, python3.10 or python3.9 is on PATH: $HOW"
exit 1
