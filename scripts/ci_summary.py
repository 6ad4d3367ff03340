#!/usr/bin/env python3
"""Reads a ctest log and prints one closing line: 'N passed, N failed, N skipped'."""
import re
import sys

text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
passed = len(re.findall(r"Test +#\d+: .*? \.+ +Passed", text))
skipped = len(re.findall(r"Test +#\d+: .*? \.+\*+Skipped", text))
failed = len(re.findall(r"Test +#\d+: .*? \.+\*+(?:Failed|Exception|Timeout|Not Run)", text))
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
