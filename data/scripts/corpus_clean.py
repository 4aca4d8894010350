#!/usr/bin/env python3
"""Turns unpacked Debian documentation packages into English prose documents (JSONL).

    corpus_clean.py --packages corpus_packages.tsv --root EXTRACTED --out DIR [--seed S] [--val-permille P]

For every package of the list (in list order), the files matching its globs under
EXTRACTED/<package>/ are read in sorted (bytewise) path order, converted from their markup
(HTML, reStructuredText / Sphinx sources, Perl POD, roff man pages, plain text) to paragraphs, and
filtered down to prose: code listings, tables, navigation, headings and other fragments are dropped
by markup rules first and by a per-paragraph prose test after. One file is one document.
A paragraph seen before anywhere in the corpus is dropped (licence boilerplate, repeated notes),
so no paragraph is in both splits. A document goes to the validation split when
sha256("SEED:package:path") mod 1000 < P, i.e. the split is BY DOCUMENT and depends on nothing
but the seed and the document's name.

Writes DIR/train/<package>.jsonl, DIR/val/<package>.jsonl ({"text", "source"} per line) and
DIR/clean_stats.json (per package: files read, bytes in, documents and text bytes per split).
Standard library only, so it runs on any Debian python3.
"""
import argparse
import fnmatch
import gzip
import hashlib
import html
import html.parser
import json
import os
import re
import sys

# --- prose test ------------------------------------------------------------------------------

WORDLIKE = re.compile(r"^[(\"'“‘]*[A-Za-z][A-Za-z'’-]*[.,;:!?)\"'”’]*$")
CODE_CHARS = set("{}[]<>=;$#@\\|_^~*`")
SENTENCE_END = re.compile(r"[a-z0-9)\"'”’][.!?](\s|$)")
MIN_WORDS = 8
MIN_DOC_WORDS = 100


def is_prose(par):
    """True for a paragraph that reads as English sentences (not code, a table row or a title)."""
    words = par.split()
    if len(words) < MIN_WORDS or "\ufffd" in par:
        return False
    chars = [c for c in par if not c.isspace()]
    letters = [c for c in chars if c.isalpha()]
    if len(letters) < 0.75 * len(chars):
        return False
    if sum(c.isascii() for c in letters) < 0.97 * len(letters):  # other languages, symbols
        return False
    if sum(c in CODE_CHARS for c in chars) > 0.02 * len(chars):
        return False
    if sum(bool(WORDLIKE.match(w)) for w in words) < 0.75 * len(words):
        return False
    return bool(SENTENCE_END.search(par))


def squash(text):
    return " ".join(text.split())


# --- HTML ------------------------------------------------------------------------------------

BLOCK_TAGS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "br", "tr", "td", "th",
              "blockquote", "section", "article", "header", "footer", "ul", "ol", "dl", "hr", "table",
              "caption", "figure", "figcaption", "main", "aside", "body"}
SKIP_TAGS = {"script", "style", "pre", "head", "nav", "table", "svg", "math", "form", "select", "textarea",
             "object", "noscript", "iframe", "button"}
# Sphinx, DocBook and Doxygen chrome: navigation bars, tables of contents, highlighted code.
SKIP_CLASSES = re.compile(r"\b(nav\w*|toc\w*|highlight\w*|sphinxsidebar\w*|related|breadcrumbs?|footer|"
                          r"header|programlisting|screen|synopsis|cmdsynopsis|funcsynopsis|literallayout|"
                          r"mediaobject|navheader|navfooter|headerlink|sidebar|admonition-code|doctest)\b")
VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "param", "source",
             "track", "wbr"}


class _HtmlProse(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.pars, self.cur = [], []
        self.skip_tag, self.skip_depth = None, 0

    def _break(self):
        if self.cur:
            self.pars.append(squash("".join(self.cur)))
            self.cur = []

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        cls = " ".join(v or "" for k, v in attrs if k in ("class", "id"))
        if tag not in VOID_TAGS and (tag in SKIP_TAGS or SKIP_CLASSES.search(cls)):
            self._break()
            self.skip_tag, self.skip_depth = tag, 1
        elif tag in BLOCK_TAGS:
            self._break()

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in BLOCK_TAGS:
            self._break()

    def handle_data(self, data):
        if self.skip_tag is None:
            self.cur.append(data)


def html_paragraphs(text):
    p = _HtmlProse()
    p.feed(text)
    p.close()
    p._break()
    return p.pars


# --- reStructuredText (Sphinx sources, kernel docs) --------------------------------------------

# Directives whose body is prose (admonitions, API descriptions); every other directive's body
# (code, includes, tables, images, toctrees, kernel-doc) is dropped with it.
RST_PROSE_DIRECTIVES = {"note", "warning", "tip", "important", "attention", "caution", "hint", "danger",
                        "error", "seealso", "versionadded", "versionchanged", "deprecated", "admonition",
                        "topic", "sidebar", "rubric", "function", "method", "class", "attribute", "data",
                        "exception", "describe", "decorator", "decoratormethod", "classmethod",
                        "staticmethod", "opcode", "cmdoption", "option", "envvar", "abstractmethod",
                        "coroutinefunction", "coroutinemethod", "c:function", "c:type", "c:member",
                        "c:macro", "c:var", "glossary", "epigraph", "pull-quote", "container"}
RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::(.*)$")
RST_COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
RST_ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+_:.])\1{2,}\s*$")
RST_TABLE_BORDER = re.compile(r"^\s*(=+(\s+=+)+|\+[-=+]+\+|[-=]+(\s+[-=]+)+)\s*$")
RST_BULLET = re.compile(r"^\s*([-*+•]|\d+[.)]|#\.|\(\w\)|[a-z][.)])\s+")
RST_FIELD = re.compile(r"^\s*:[\w -]+:(\s|$)")
RST_INLINE = [
    (re.compile(r":[\w:.-]+:`~?!?([^`<]*?)\s*<[^`>]*>`"), r"\1"),  # :ref:`text <target>`
    (re.compile(r":[\w:.-]+:`[~!]?\.?([^`]*)`"), r"\1"),            # :func:`name`
    (re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?"), r"\1"),              # `text <url>`_
    (re.compile(r"``([^`]+)``"), r"\1"),
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), r"\1"),
    (re.compile(r"\|([\w -]+)\|_{0,2}"), r"\1"),
    (re.compile(r"\s*\[(#\w*|\*|\d+)\]_"), ""),
    (re.compile(r"\\(.)"), r"\1"),
]


def _indent(line):
    return len(line) - len(line.lstrip())


def rst_inline(text):
    for pattern, repl in RST_INLINE:
        text = pattern.sub(repl, text)
    return text


def rst_paragraphs(text):
    lines = text.expandtabs(8).splitlines()
    kept = []  # lines of prose, "" for paragraph breaks
    i, n = 0, len(lines)

    def skip_body(i, base):
        """Index past the block indented deeper than `base` that starts at i (blank lines inside)."""
        while i < n and (not lines[i].strip() or _indent(lines[i]) > base):
            i += 1
        return i

    while i < n:
        line = lines[i]
        m = RST_DIRECTIVE.match(line)
        if m:
            base, name = len(m.group(1)), m.group(2).lower()
            i += 1
            while i < n and lines[i].strip() and RST_FIELD.match(lines[i]):
                i += 1  # the directive's options
            kept.append("")
            if name.split(":")[-1] not in RST_PROSE_DIRECTIVES and name not in RST_PROSE_DIRECTIVES:
                i = skip_body(i, base)
            continue
        if RST_COMMENT.match(line):
            i = skip_body(i + 1, _indent(line))
            kept.append("")
            continue
        if RST_ADORNMENT.match(line) or RST_TABLE_BORDER.match(line) or line.lstrip().startswith(("|", "+-", ">>>")):
            kept.append("")  # an underline ends its title, which then stands alone
            i += 1
            continue
        if not line.strip() or RST_FIELD.match(line):
            kept.append("")
            i += 1
            continue
        stripped = line.rstrip()
        if stripped.endswith("::"):
            # A literal block follows: keep the sentence (":" for "::"), drop the indented code.
            head = stripped[:-2].rstrip()
            if head:
                kept.append(head + ":")
            base = _indent(line)
            i += 1
            while i < n and not lines[i].strip():
                i += 1
            if i < n and _indent(lines[i]) > base:
                i = skip_body(i, base)
            kept.append("")
            continue
        m = RST_BULLET.match(line)
        if m:
            kept.append("")
            line = line[m.end():]
        kept.append(line.strip())
        i += 1
    pars, cur = [], []
    for line in kept + [""]:
        if line:
            cur.append(line)
        elif cur:
            pars.append(rst_inline(squash(" ".join(cur))))
            cur = []
    return pars


# --- Perl POD ----------------------------------------------------------------------------------

POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}
POD_MULTI = re.compile(r"([A-Z])<{2,}\s+(.*?)\s+>{2,}", re.S)
POD_SINGLE = re.compile(r"([A-Z])<([^<>]*)>")


def _pod_code(m):
    code, body = m.group(1), m.group(2)
    if code == "E":
        if body in POD_ESCAPES:
            return POD_ESCAPES[body]
        try:  # E<0x263A> hex, E<075> octal, E<61> decimal
            if body.lower().startswith("0x"):
                return chr(int(body, 16))
            if body.isdigit():
                return chr(int(body, 8) if body.startswith("0") and len(body) > 1 else int(body))
        except ValueError:
            return ""
        return html.unescape("&" + body + ";")
    if code in "XZ":
        return ""
    if code == "L":
        if "|" in body:
            return body.split("|", 1)[0]
        return body.replace('"', "").replace("/", " ").strip()
    return body


def pod_inline(text):
    text = POD_MULTI.sub(_pod_code, text)
    for _ in range(8):  # nested codes, innermost first
        new = POD_SINGLE.sub(_pod_code, text)
        if new == text:
            break
        text = new
    return text


def pod_paragraphs(text):
    pars, in_pod, skipping = [], True, None
    for block in re.split(r"\n[ \t]*\n", text):
        if not block.strip():
            continue
        if block.startswith("="):
            cmd, _, rest = block[1:].partition(" ")
            cmd = cmd.split("\n")[0]
            if cmd == "cut":
                in_pod = False
            elif cmd in ("pod", "head1", "head2", "head3", "head4", "item", "over", "back", "encoding"):
                in_pod = True
            if skipping:
                if cmd == "end" and rest.split()[:1] == [skipping]:
                    skipping = None
                continue
            if cmd == "begin":
                skipping = (rest.split() or [""])[0]
            elif cmd in ("item",) and rest.strip() not in ("", "*") and not rest.strip().isdigit():
                pars.append(squash(pod_inline(rest)))
            elif cmd.startswith("head"):
                pars.append(squash(pod_inline(rest)))
            continue
        if not in_pod or skipping or block[0] in " \t":
            continue  # Perl code outside POD, a =begin region, or a verbatim (code) paragraph
        pars.append(squash(pod_inline(block)))
    return pars


# --- roff man pages ------------------------------------------------------------------------------

ROFF_GLYPHS = {"em": "—", "en": "–", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
               "bu": "•", "co": "©", "rg": "®", "tm": "™", "mu": "×", "<=": "≤", ">=": "≥", "->": "→",
               "<-": "←", "hy": "-", "mi": "-", "pl": "+", "eq": "=", "ti": "~", "ha": "^", "rs": "\\",
               "at": "@", "sh": "#", "Do": "$", "ga": "`", "sl": "/", "ba": "|", "br": "|", "de": "°",
               "ua": "↑", "da": "↓", "sc": "§", "ps": "¶", "aa": "´", "R": "®", "Tm": "™"}
ROFF_ESCAPE = re.compile(r"\\(\(..|\[[^\]]*\]|\*\(..|\*\[[^\]]*\]|\*.|f\(..|f\[[^\]]*\]|f.|s[+-]?\d+|"
                         r"[kn]\(..|[kn].|[hvwlLbxoDNZ]'[^']*'|.)")
ROFF_BREAKS = {"PP", "LP", "P", "TP", "IP", "HP", "sp", "br", "RS", "RE", "in", "ti", "SH", "SS", "TQ",
               "bp", "ne", "SY", "YS", "OP"}
ROFF_FONT_MACROS = {"B", "I", "SM", "SB", "BR", "IR", "RB", "RI", "BI", "IB", "UR", "MT", "CW", "R"}


def _roff_escape(m):
    e = m.group(1)
    if e in ("-", "e", "\\"):
        return {"-": "-", "e": "\\", "\\": "\\"}[e]
    if e in (" ", "~", "0"):
        return " "
    if e.startswith("("):
        return ROFF_GLYPHS.get(e[1:], "")
    if e.startswith("["):
        return ROFF_GLYPHS.get(e[1:-1], "")
    if e.startswith("*"):
        name = e[2:] if e.startswith("*(") else e[2:-1] if e.startswith("*[") else e[1:]
        return {"lq": "“", "rq": "”", "R": "®", "Tm": "™"}.get(name, "")
    return ""  # fonts, sizes, motions, zero-width marks


def roff_args(rest):
    return [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', rest)]


def roff_paragraphs(text):
    pars, cur, skip_until = [], [], None
    lines = text.splitlines()
    if any(l.startswith(".so ") for l in lines[:3]) and sum(1 for l in lines if l.strip()) <= 3:
        return []  # a link page: ".so man3/other.3"

    def flush():
        if cur:
            pars.append(squash(" ".join(cur)))
            cur.clear()

    for line in lines:
        line = re.sub(r'\\".*$', "", line)  # comments
        if skip_until:
            if re.match(r"^[.']\s*" + skip_until + r"\b", line):
                skip_until = None
            continue
        if line.startswith((".", "'")):
            req = line[1:].strip()
            name, _, rest = req.partition(" ")
            if name in ("nf", "EX"):
                flush()
                skip_until = "fi" if name == "nf" else "EE"
            elif name in ("TS", "EQ", "PS", "de", "ig"):
                flush()
                skip_until = {"TS": "TE", "EQ": "EN", "PS": "PE", "de": r"\.", "ig": r"\."}[name]
            elif name in ("SH", "SS"):
                flush()  # the heading itself is not prose
            elif name in ROFF_BREAKS:
                flush()
            elif name in ROFF_FONT_MACROS and rest:
                sep = "" if len(name) == 2 and name not in ("SM", "SB", "UR", "MT", "CW") else " "
                cur.append(ROFF_ESCAPE.sub(_roff_escape, sep.join(roff_args(rest))))
            continue
        if not line.strip():
            flush()
            continue
        cur.append(ROFF_ESCAPE.sub(_roff_escape, line))
    flush()
    return pars


# --- files -------------------------------------------------------------------------------------

def file_format(path):
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if re.search(r"\.html?(\.en)?$", name) or name.endswith(".xhtml"):
        return "html"
    if name.endswith((".pod", ".pm")):
        return "pod"
    if re.search(r"/man/man\d\w*/[^/]+\.\d\w*$", name):
        return "roff"
    return "rst"  # .rst, Sphinx .rst.txt, kernel .txt: plain text is rST without markup


def read_text(path):
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8"), len(raw)
    except UnicodeDecodeError:
        return raw.decode("latin-1"), len(raw)  # old man pages; non-ASCII prose is filtered anyway


CONVERTERS = {"html": html_paragraphs, "rst": rst_paragraphs, "pod": pod_paragraphs, "roff": roff_paragraphs}


def read_package_list(path):
    """Lines "package version licence glob[,glob,!excluded-glob...]"; '#' comments."""
    pkgs = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 4:
                sys.exit(f"{path}:{lineno}: expected 'package version licence globs', got {line!r}")
            pkgs.append({"package": parts[0], "version": parts[1], "licence": parts[2], "globs": parts[3].split(",")})
    return pkgs


def package_files(root, globs):
    """Files matching a glob and no "!glob" (fnmatch: "*" crosses "/"), sorted bytewise."""
    include = [g for g in globs if not g.startswith("!")]
    exclude = [g[1:] for g in globs if g.startswith("!")]
    files = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if (any(fnmatch.fnmatchcase(rel, g) for g in include) and not any(fnmatch.fnmatchcase(rel, g) for g in exclude)
                    and not os.path.islink(os.path.join(root, rel))):
                files.append(rel)
    return sorted(files, key=lambda s: s.encode())


def in_validation(seed, package, rel, permille):
    h = hashlib.sha256(f"{seed}:{package}:{rel}".encode()).hexdigest()
    return int(h[:12], 16) % 1000 < permille


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packages", required=True)
    ap.add_argument("--root", required=True, help="EXTRACTED: one unpacked tree per package")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--val-permille", type=int, default=20)
    ap.add_argument("--max-files", type=int, default=0, help="per package, for small test corpora (0: all)")
    args = ap.parse_args()
    for split in ("train", "val"):
        os.makedirs(os.path.join(args.out, split), exist_ok=True)
    seen = set()
    stats = {}
    for pkg in read_package_list(args.packages):
        name, root = pkg["package"], os.path.join(args.root, pkg["package"])
        files = package_files(root, pkg["globs"])
        if args.max_files:
            files = files[: args.max_files]
        if not files:
            sys.exit(f"corpus_clean: {name}: no file under {root} matches {pkg['globs']}")
        st = {"files": len(files), "bytes_in": 0, "train": {"documents": 0, "bytes": 0}, "val": {"documents": 0, "bytes": 0}}
        outs = {s: open(os.path.join(args.out, s, name + ".jsonl"), "w", encoding="utf-8") for s in ("train", "val")}
        for rel in files:
            text, nbytes = read_text(os.path.join(root, rel))
            st["bytes_in"] += nbytes
            kept = []
            for par in CONVERTERS[file_format(rel)](text):
                if not is_prose(par):
                    continue
                key = hashlib.sha1(par.lower().encode()).digest()
                if key not in seen:
                    seen.add(key)
                    kept.append(par)
            doc = "\n\n".join(kept)
            if len(doc.split()) < MIN_DOC_WORDS:
                continue
            split = "val" if in_validation(args.seed, name, rel, args.val_permille) else "train"
            outs[split].write(json.dumps({"text": doc, "source": f"{name}:{rel}"}, ensure_ascii=False) + "\n")
            st[split]["documents"] += 1
            st[split]["bytes"] += len(doc.encode())
        for f in outs.values():
            f.close()
        stats[name] = st
        print(f"corpus_clean: {name}: {len(files)} files, {st['bytes_in']} bytes -> "
              f"train {st['train']['documents']} docs {st['train']['bytes']} bytes, "
              f"val {st['val']['documents']} docs {st['val']['bytes']} bytes", flush=True)
    with open(os.path.join(args.out, "clean_stats.json"), "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
