#!/usr/bin/env python3
"""Flame graph of `perf script` output (python3 standard library only).

  perf script -i perf.data | python3 bench/lib/flamegraph.py --title "..." --svg OUT.svg > summary.json

Reads the text `perf script` prints for samples recorded with call graphs (perf record -g or
--call-graph dwarf): per sample a header line (comm, pid/tid, time, period, event), then one
frame per line, leaf first, `<tab><addr> <symbol>+<off> (<dso>)`, and a blank line. Stacks are
folded root first (all -> thread name -> outermost frame ... leaf) and drawn as a self-contained
SVG (no script, no external resources): one rectangle per frame, width proportional to samples,
root at the bottom, a <title> tooltip with the full name, samples and percentage, coloured by
kind of code (kernel, the parley binary, C/C++ runtime, CAF, SQLite, other libraries). Frames
narrower than --min-percent of all samples are left out (their samples stay in their parent).

Prints a JSON summary on stdout: total samples, the share of samples (self time) per kind, and
the top functions by self and by inclusive samples. Lines it does not understand are skipped;
exits 1 with a message on stderr when there were no samples.
"""
import argparse
import colorsys
import html
import json
import os
import re
import sys
import zlib

KINDS = ["kernel", "parley", "libc", "caf", "sqlite", "other"]
KIND_NAMES = {"kernel": "kernel", "parley": "parley binary", "libc": "libc/libstdc++/ld",
              "caf": "CAF", "sqlite": "SQLite", "other": "other libraries"}
# base colours (hue, saturation %, lightness %) per kind; each frame varies the lightness a little
KIND_HSL = {"kernel": (28, 85, 60), "parley": (0, 70, 62), "libc": (50, 80, 55),
            "caf": (210, 65, 65), "sqlite": (130, 50, 55), "other": (280, 30, 68),
            "root": (0, 0, 80), "thread": (0, 0, 70)}

# `<spaces or tab><hex address> <symbol, possibly with spaces and parentheses> (<dso>)`
FRAME_RE = re.compile(r"^\s+([0-9a-fA-F]+)\s+(.*?)\s*\(([^()]*)\)\s*$")
OFFSET_RE = re.compile(r"\+0x[0-9a-fA-F]+$")
# header: "comm pid/tid [cpu] time: [period] event: [rest]"; comm may hold spaces
HEADER_RE = re.compile(r"^(.*?)\s+(\d+)(?:/(\d+))?\s+(?:\[\d+\]\s+)?\d+\.\d+:\s*(?:(\d+)\s+)?(\S+):(?:\s+(.*))?$")


def kind_of(dso, addr, binary):
    base = os.path.basename(dso)
    if dso.startswith("[kernel") or dso in ("[kernel.kallsyms]", "[guest.kernel.kallsyms]") or base.endswith(".ko"):
        return "kernel"
    if dso in ("[unknown]", "unknown", ""):
        # unresolved: a kernel-half address is kernel text; ffffffffffffffff is perf's "unwinding
        # stopped" marker, not an address
        try:
            a = int(addr, 16)
        except ValueError:
            return "other"
        return "kernel" if 0xffff800000000000 <= a < 0xffffffffffffffff else "other"
    if binary and (base == binary or dso == binary):
        return "parley"
    if base.startswith("libcaf"):
        return "caf"
    if base.startswith("libsqlite"):
        return "sqlite"
    if dso == "[vdso]" or re.match(r"(libc|libstdc\+\+|libm|libgcc_s|libpthread|libdl|librt|ld-linux[-\w.]*|ld)[.-]", base):
        return "libc"
    return "other"


class Sample:
    __slots__ = ("comm", "period", "frames")

    def __init__(self, comm, period):
        self.comm = comm
        self.period = period
        self.frames = []  # leaf first: (addr, symbol, dso)


def parse(lines):
    """Yields Samples; never raises on odd input (odd lines are skipped and counted)."""
    stats = {"skipped_lines": 0}
    cur = None
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            if cur is not None:
                yield cur
                cur = None
            continue
        if line[0] in " \t":
            m = FRAME_RE.match(line)
            if cur is None or not m:
                stats["skipped_lines"] += 1
                continue
            cur.frames.append((m.group(1), m.group(2), m.group(3)))
            continue
        # a header line starts a new sample (a previous one without a blank line ends here)
        if cur is not None:
            yield cur
            cur = None
        h = HEADER_RE.match(line)
        if not h:
            stats["skipped_lines"] += 1
            continue
        cur = Sample(h.group(1).strip() or "?", 1)
        rest = (h.group(6) or "").strip()
        # without call graphs perf prints the one frame on the header line itself
        if rest:
            m = FRAME_RE.match("\t" + rest)
            if m:
                cur.frames.append((m.group(1), m.group(2), m.group(3)))
    if cur is not None:
        yield cur
    parse.stats = stats


parse.stats = {"skipped_lines": 0}


def resolve(frames, binary):
    """Leaf-first frames -> root-first [(name, kind)]. perf prints inlined functions with the
    dso `(inlined)`: they take the kind of the frame with the same address, else of their caller."""
    n = len(frames)
    out = []
    for i, (addr, sym, dso) in enumerate(frames):
        name = OFFSET_RE.sub("", sym).strip() or "[unknown]"
        if dso == "inlined":
            real = None
            for j in range(i + 1, n):
                if frames[j][2] != "inlined" and (frames[j][0] == addr or real is None):
                    real = frames[j]
                    if frames[j][0] == addr:
                        break
            kind = kind_of(real[2], real[0], binary) if real else "other"
        else:
            kind = kind_of(dso, addr, binary)
        if name == "[unknown]" and dso not in ("[unknown]", "inlined", ""):
            name = f"[unknown] ({os.path.basename(dso)})"
        out.append((name, kind))
    out.reverse()
    return out


# ---- short names -------------------------------------------------------------------------------

_OPS = re.compile(r"operator\s*(?:\(\)|\[\]|<=>|<<=|>>=|<<|>>|<=|>=|->\*|->|<|>|new\[\]|delete\[\]|new|delete)")
_TRAILING = re.compile(r"(?:\s+(?:const|volatile|noexcept|&&|&))+$")


def short_name(name):
    """`void ns::cls<T, U>::fn<V>(int, char const*) const [clone .isra.0]` -> `ns::cls::fn`:
    no template arguments, parameter lists, return type, qualifiers or clone suffixes."""
    if not name or name.startswith("["):
        return name
    s = re.sub(r"\s*\[clone [^\]]*\]", "", name)
    s = s.replace("(anonymous namespace)", "{anon}")
    ops = []

    def protect(m):
        op = m.group(0)[len("operator"):].strip()
        ops.append("operator" + (" " if op[0].isalpha() else "") + op)
        return f"\x00{len(ops) - 1}\x00"

    s = _OPS.sub(protect, s)
    out, depth = [], 0
    for ch in s:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    s = re.sub(r"\s+", " ", "".join(out)).strip()
    s = _TRAILING.sub("", s)
    # the return type (and `static`, `virtual thunk to` ...) is everything before the last space
    # outside braces
    depth, cut = 0, -1
    for i, ch in enumerate(s):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == " " and depth == 0:
            cut = i
    if cut >= 0 and cut + 1 < len(s):
        s = s[cut + 1:]
    s = re.sub(r"\x00(\d+)\x00", lambda m: ops[int(m.group(1))], s)
    return s or name


# ---- folding -----------------------------------------------------------------------------------

class Node:
    __slots__ = ("name", "kind", "total", "self", "children")

    def __init__(self, name, kind):
        self.name = name
        self.kind = kind
        self.total = 0
        self.self = 0
        self.children = {}

    def child(self, name, kind):
        c = self.children.get((name, kind))
        if c is None:
            c = self.children[(name, kind)] = Node(name, kind)
        return c


def fold(samples, binary, use_period=False):
    root = Node("all", "root")
    n = 0
    for s in samples:
        w = s.period if use_period else 1
        n += 1
        root.total += w
        node = root.child(s.comm, "thread")
        node.total += w
        stack = resolve(s.frames, binary) or [("[unknown]", "other")]
        for name, kind in stack:
            node = node.child(name, kind)
            node.total += w
        node.self += w
    return root, n


def summarize(root, top_n):
    total = root.total
    self_kind = {k: 0 for k in KINDS}
    self_fn, incl_fn = {}, {}

    def walk(node, on_stack):
        if node.kind not in ("root", "thread"):
            sn = short_name(node.name)
            key = sn
            self_kind[node.kind] += node.self
            if node.self:
                e = self_fn.setdefault(key, {"function": sn, "kind": node.kind, "samples": 0})
                e["samples"] += node.self
            if key not in on_stack:  # recursion counts once per stack
                e = incl_fn.setdefault(key, {"function": sn, "kind": node.kind, "samples": 0})
                e["samples"] += node.total
            on_stack = on_stack | {key}
        for c in node.children.values():
            walk(c, on_stack)

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    walk(root, frozenset())

    def top(d):
        rows = sorted(d.values(), key=lambda e: (-e["samples"], e["function"]))[:top_n]
        for e in rows:
            e["percent"] = round(100.0 * e["samples"] / total, 2)
        return rows

    threads = sorted(({"thread": c.name, "samples": c.total, "percent": round(100.0 * c.total / total, 2)}
                      for c in root.children.values()), key=lambda e: -e["samples"])
    return {
        "samples": total,
        "kinds": {k: {"samples": v, "percent": round(100.0 * v / total, 2)} for k, v in self_kind.items()},
        "threads": threads,
        "top_self": top(self_fn),
        "top_inclusive": top(incl_fn),
    }


# ---- SVG ---------------------------------------------------------------------------------------

def colour(kind, name):
    """The kind's colour, its hue and lightness varied a little per name (adjacent frames differ)."""
    h, s, l = KIND_HSL.get(kind, KIND_HSL["other"])
    v = zlib.crc32(name.encode("utf-8", "replace")) & 0xffff
    h = ((h + (v % 11) - 5) % 360) / 360.0
    l = (l + (v >> 8) % 13 - 6) / 100.0
    r, g, b = colorsys.hls_to_rgb(h, l, s / 100.0)
    return "#%02x%02x%02x" % (round(r * 255), round(g * 255), round(b * 255))


def fit_label(label, chars):
    """At most `chars` characters: leading namespaces/classes go first (`..scheduler::run`), then
    the end is cut (`scheduler::ru..`); nothing when fewer than 4 characters fit."""
    if chars < 4:
        return ""
    if len(label) <= chars:
        return label
    parts = label.split("::")
    for i in range(1, len(parts)):
        tail = ".." + "::".join(parts[i:])
        if len(tail) <= chars:
            return tail
    return label[:chars - 2] + ".."


def svg(root, title, subtitle, min_frac, width=1200, row_h=17, font=11):
    total = root.total
    char_w = font * 0.59
    pad_x, top_h, bottom_h = 10, 62, 8
    rects, depth_max = [], [0]
    min_samples = total * min_frac
    omitted = [0]

    def place(node, x, depth):
        depth_max[0] = max(depth_max[0], depth)
        rects.append((node, x, depth))
        cx = x
        for c in sorted(node.children.values(), key=lambda c: (c.name, c.kind)):
            if c.total < min_samples:
                omitted[0] += 1
            else:
                place(c, cx, depth + 1)
            cx += c.total

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    place(root, 0, 0)
    height = top_h + (depth_max[0] + 1) * row_h + bottom_h
    scale = (width - 2 * pad_x) / total
    bad = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

    def e(text):  # XML-escaped, without characters XML 1.0 does not allow
        return html.escape(bad.sub("?", text))
    out = [f'<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Verdana, DejaVu Sans, sans-serif" font-size="{font}">',
           f'<title>{e(title)}</title>',
           '<style>rect.f{stroke:#fff;stroke-width:0.5}g.f:hover rect{stroke:#000;stroke-width:1}'
           'text{fill:#000;pointer-events:none}</style>',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8f8f4"/>',
           f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="{font + 4}">{e(title)}</text>',
           f'<text x="{width / 2:.0f}" y="34" text-anchor="middle" fill="#555">{e(subtitle)}</text>']
    # legend
    lx = pad_x
    for k in KINDS:
        label = KIND_NAMES[k]
        out.append(f'<rect x="{lx}" y="43" width="12" height="12" fill="{colour(k, "")}"/>'
                   f'<text x="{lx + 16}" y="53">{e(label)}</text>')
        lx += 16 + int(len(label) * char_w) + 18
    for node, x, depth in rects:
        w = node.total * scale
        px = pad_x + x * scale
        y = height - bottom_h - (depth + 1) * row_h
        pct = 100.0 * node.total / total
        if node.kind == "root":
            tip = f"all threads: {node.total:,} samples (100%)"
            label = f"all ({node.total:,} samples)"
        elif node.kind == "thread":
            tip = f"thread {node.name}: {node.total:,} samples ({pct:.2f}%)"
            label = f"thread {node.name}"
        else:
            tip = (f"{node.name}\n{node.total:,} samples ({pct:.2f}%), self {node.self:,} "
                   f"({100.0 * node.self / total:.2f}%) [{KIND_NAMES[node.kind]}]")
            label = short_name(node.name)
        label = fit_label(label, int((w - 6) / char_w))
        out.append(f'<g class="f"><title>{e(tip)}</title>'
                   f'<rect class="f" x="{px:.2f}" y="{y}" width="{max(w, 0.1):.2f}" height="{row_h - 1}" '
                   f'rx="2" fill="{colour(node.kind, node.name)}"/>'
                   + (f'<text x="{px + 3:.2f}" y="{y + row_h - 5}">{e(label)}</text>' if label else "")
                   + '</g>')
    out.append("</svg>")
    return "\n".join(out) + "\n", omitted[0]


def main():
    p = argparse.ArgumentParser(
        description="Folds `perf script` output (samples with call graphs) into a flame graph SVG "
                    "and prints a JSON summary (samples, self-time share per kind of code, top "
                    "functions by self and inclusive samples).",
        epilog='usage: perf script -i perf.data | python3 bench/lib/flamegraph.py --title "..." '
               '--svg OUT.svg > summary.json')
    p.add_argument("input", nargs="?", default="-", help="perf script output (default: stdin)")
    p.add_argument("--svg", help="write the flame graph here")
    p.add_argument("--title", default="CPU flame graph", help="the title line of the SVG")
    p.add_argument("--binary", default="parley",
                   help="file name of the profiled program: its frames are the 'parley' kind (default parley)")
    p.add_argument("--min-percent", type=float, default=0.1,
                   help="leave out frames narrower than this share of all samples (default 0.1)")
    p.add_argument("--top", type=int, default=15, help="functions in each top list (default 15)")
    p.add_argument("--width", type=int, default=1200, help="SVG width in pixels (default 1200)")
    a = p.parse_args()

    try:
        if a.input == "-":
            src = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
        else:
            src = open(a.input, encoding="utf-8", errors="replace")
    except OSError as ex:
        sys.exit(f"flamegraph.py: cannot read {a.input}: {ex}")
    with src:
        root, n = fold(parse(src), os.path.basename(a.binary))
    if n == 0:
        sys.exit(f"flamegraph.py: no samples in the input ({parse.stats['skipped_lines']} lines not understood); "
                 "was it `perf script` output of a perf.data with samples?")
    summary = summarize(root, a.top)
    summary["skipped_lines"] = parse.stats["skipped_lines"]
    summary["title"] = a.title
    if a.svg:
        sub = (f"{n:,} samples; width = share of samples, root at the bottom, leaf on top; "
               f"frames under {a.min_percent:g}% left out; hover for full names")
        text, omitted = svg(root, a.title, sub, a.min_percent / 100.0, width=a.width)
        summary["frames_left_out"] = omitted
        tmp = a.svg + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, a.svg)
    try:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): not our failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
