"""File patterns: the files a pattern matches, and the text a matched file's
name is written as.

Beam's `FileSystems.match` takes patterns only and cannot quote a wildcard,
its `*` does not match `\\`, and its `FileBasedSource` matches its path again
when it reads: a matched `br[1].jsonl` was read as `br1.jsonl`. So patterns
are matched here, once, by the definition below; Beam's file systems only
list (under the pattern's literal prefix) and open files by their exact
names, and nothing downstream treats a matched path as a pattern.

The definition (docs/command.md, `--input`):
- `*`: any characters but `/`; `?`: one character but `/`; `[abc]`, `[a-z]`,
  `[!abc]`: one character of (not of) the set, never `/`;
- `**`: any characters, `/` included; `**/` at the start of a path
  component: zero or more folders (`d/**/*.jsonl` matches `d/a.jsonl` and
  `d/x/y/a.jsonl`, as Python's glob(recursive=True) and gsutil do);
- every other character matches itself (`\\`, `{`, `}`, spaces, quotes,
  line breaks); `[*]`, `[?]` and `[[]` match `*`, `?` and `[` (`escape`).
  Names starting with `.` are matched like any other.

Beam is imported where a file system of its is used (a bucket, metadata
of a match): matching the paths of this machine (`local_paths`) needs
none, so that `--help`, `inspect` and early configuration mistakes do not
pay a second for it.
"""
import os
import posixpath
import re
import stat


_WILDCARD = re.compile(r'[*?\[]')
# Lone surrogates: how Python holds the bytes of a local name that are not
# UTF-8 (U+DC80..U+DCFF, PEP 383); no UTF-8 text holds one.
_SURROGATE = re.compile('[\ud800-\udfff]')
_PERCENT_HEX = re.compile(r'%(?=[0-9A-Fa-f]{2})')


class PatternError(ValueError):
  """A pattern that cannot be matched, or a folder that cannot be listed; says which."""


def is_local(path: str) -> bool:
  """Whether `path` names a file of this machine (no scheme such as gs://)."""
  return not re.match(r'^[a-z][a-z0-9+.-]*://', path)

def has_wildcards(pattern: str) -> bool:
  return bool(_WILDCARD.search(pattern))


def escape(path: str) -> str:
  """The pattern that matches exactly `path`."""
  return _WILDCARD.sub(lambda m: f'[{m.group()}]', path)


def _literal(pattern: str) -> tuple:
  """(text, folder text, folder end): what the pattern matches up to its
  first wildcard (a set of one character, `[*]`, being that character), and
  of that up to its last `/`, which ends at `folder end` in the pattern."""
  text, folder, folder_end, i = [], '', 0, 0
  while i < len(pattern):
    c = pattern[i]
    if c == '[' and pattern[i + 2:i + 3] == ']' and pattern[i + 1] not in '!/':
      text.append(pattern[i + 1])
      i += 3
      continue
    if c in '*?[':
      break
    text.append(c)
    i += 1
    if c == '/':
      folder, folder_end = ''.join(text), i
  return ''.join(text), folder, folder_end


def literal_prefix(pattern: str) -> str:
  """What every path the pattern matches starts with."""
  return _literal(pattern)[0]


def literal_folder(pattern: str) -> str:
  """The folder (ending in '/') every path the pattern matches lies under:
  the pattern's up to its last `/` before its first wildcard; '' if none."""
  return _literal(pattern)[1]


def translate(pattern: str) -> str:
  """The regular expression of a pattern (the module's definition)."""
  out, i, n = [], 0, len(pattern)
  while i < n:
    c, start = pattern[i], i
    i += 1
    if c == '*':
      if pattern[i:i + 1] != '*':
        out.append('[^/]*')
        continue
      while pattern[i:i + 1] == '*':
        i += 1
      if pattern[i:i + 1] == '/' and (start == 0 or pattern[start - 1] == '/'):
        out.append('(?:.*/)?')  # zero or more whole folders
        i += 1
      else:
        out.append('.*')
    elif c == '?':
      out.append('[^/]')
    elif c == '[':
      j = i + 1 if pattern[i:i + 1] == '!' else i
      j = pattern.find(']', j + 1 if pattern[j:j + 1] == ']' else j)
      if j < 0:  # no closing bracket: a plain `[`
        out.append(re.escape(c))
        continue
      body, i = pattern[i:j], j + 1
      negate = body.startswith('!')
      if negate:
        body = body[1:]
      # Every character of the set as itself, `-` still making ranges.
      out.append(f'(?!/)[{"^" if negate else ""}{_set_members(body)}]')
    else:
      out.append(re.escape(c))
  return '(?s:' + ''.join(out) + r')\Z'


def _set_members(body: str) -> str:
  """A set's characters as a regular expression's: each as itself, `a-b` a
  range; every character but a range's own `-` escaped (`[+--]` as `+-\\-`:
  Python's re would warn of `--`)."""
  def escaped(ch):
    return '\\' + ch if ch in '\\[]^&~|-' else ch
  out, k = [], 0
  while k < len(body):
    if body[k + 1:k + 2] == '-' and k + 2 < len(body):
      out.append(f'{escaped(body[k])}-{escaped(body[k + 2])}')
      k += 3
    else:
      out.append(escaped(body[k]))
      k += 1
  return ''.join(out)


def compile_pattern(pattern: str):
  try:
    return re.compile(translate(pattern))
  except re.error as e:  # a reversed range such as [z-a]
    raise PatternError(f'{pattern} is not a valid pattern: {e}') from None


def match(pattern: str) -> list:
  """FileMetadata of every file `pattern` matches (never a folder), sorted by
  path. Locally that includes what cannot be read as a file (a broken link,
  a named pipe: size 0), so that each is accounted for.
  Raises PatternError where a folder under the pattern cannot be listed."""
  regex = compile_pattern(pattern)
  if is_local(pattern):
    found = _local_files(pattern, regex)
  else:
    found = _remote_files(pattern, regex)
  return sorted(found, key=lambda m: m.path)


def is_folder(path: str) -> bool:
  """Whether a path (no wildcards) names a folder: locally a directory, in
  a bucket a prefix that objects lie under."""
  if path.endswith('/'):
    return True
  if is_local(path):
    return os.path.isdir(path)
  try:
    return any(True for _ in _list(path + '/'))
  except Exception:  # pylint: disable=broad-except  (a missing bucket holds no folder)
    return False


def local_paths(pattern: str) -> list:
  """The paths `match` gives for a pattern of this machine, sorted, without
  importing Beam."""
  return sorted(_local_paths(pattern, compile_pattern(pattern)))


def _local_files(pattern: str, regex) -> list:
  return [_local_metadata(path) for path in _local_paths(pattern, regex)]


def _local_paths(pattern: str, regex) -> list:
  if not has_wildcards(pattern):
    if pattern.endswith('/') or os.path.isdir(pattern) or not os.path.lexists(pattern):
      return []
    return [pattern]
  _, top, end = _literal(pattern)  # top: '' for a relative pattern without a folder
  rest = pattern[end:]
  # Folders below `top` the pattern can reach: all with `**`, else as many
  # as it has `/`.
  depth = None if '**' in rest else rest.count('/')
  root = top or '.'
  if not os.path.isdir(root):
    return []

  def failed(error):
    raise PatternError(f'cannot list {error.filename}: {error.strerror}')

  files, seen = [], set()
  # Linked folders are followed, as a shell's glob does; a folder reached
  # again (through another link, or a link to an ancestor, which would loop)
  # is listed once, under the first of its paths in sorted order, so that a
  # re-run or a join names its files alike.
  for folder, folders, names in os.walk(root, onerror=failed, followlinks=True):
    folders.sort()
    info = os.stat(folder)
    if (info.st_dev, info.st_ino) in seen:
      folders[:] = []
      continue
    seen.add((info.st_dev, info.st_ino))
    below = folder[len(root):].lstrip('/')  # the folder relative to `top`
    if depth is not None and (below.count('/') + 1 if below else 0) >= depth:
      folders[:] = []
    for name in names:
      path = top + (f'{below}/{name}' if below else name)
      if regex.match(path):
        files.append(path)
  return files


def _local_metadata(path: str):
  """Beam's FileMetadata of a local path, as its LocalFileSystem gives it."""
  from apache_beam.io.filesystem import FileMetadata
  try:
    info = os.stat(path)
  except OSError:  # a broken link: a file error when read
    return FileMetadata(path, 0)
  size = info.st_size if stat.S_ISREG(info.st_mode) else 0
  return FileMetadata(path, size, info.st_mtime)


def _list(prefix: str):
  """FileMetadata of everything under a remote prefix. Beam lists only as
  part of matching a pattern, which cannot quote a wildcard; its file
  systems' `_list` is that listing, under a literal prefix."""
  from apache_beam.io.filesystems import FileSystems
  filesystem = FileSystems.get_filesystem(prefix)
  if filesystem.has_dirs():  # listed by folder: the prefix's own
    scheme, rest = prefix.split('://', 1)
    prefix = f'{scheme}://{posixpath.dirname(rest)}'
  return filesystem._list(prefix)  # pylint: disable=protected-access


def _remote_files(pattern: str, regex) -> list:
  from apache_beam.io.filesystems import FileSystems
  if not has_wildcards(pattern):
    filesystem = FileSystems.get_filesystem(pattern)
    if pattern.endswith('/') or not filesystem.exists(pattern):
      return []
    return [filesystem.metadata(pattern)]
  # A folder placeholder object (`d/`) is no file.
  return [m for m in _list(literal_prefix(pattern))
          if not m.path.endswith('/') and regex.match(m.path)]


def size_of(path: str):
  """A file's stored size by its exact name; None where it cannot be told."""
  try:
    if is_local(path):
      return os.stat(path).st_size
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.get_filesystem(path).metadata(path).size_in_bytes
  except Exception:  # pylint: disable=broad-except  (gone, or not allowed)
    return None


def name_text(path: str) -> str:
  """A file's name as written in outputs (`filename`, `incomplete_files`):
  the name itself, except that a `%` followed by two hex digits is written
  `%25`, and each byte that is not part of valid UTF-8 (possible in local
  names only) `%XX`. `urllib.parse.unquote_to_bytes(text)` gives back the
  name's bytes exactly."""
  if '%' not in path and not _SURROGATE.search(path):
    return path
  text = _PERCENT_HEX.sub('%25', path)
  return _SURROGATE.sub(_percent_bytes, text)


def printable(text: str) -> str:
  """`text` (a message that may quote a name) as valid Unicode: each byte of
  a name that is not UTF-8 as `%XX`."""
  return _SURROGATE.sub(_percent_bytes, text) if _SURROGATE.search(text) else text


def _percent_bytes(found) -> str:
  char = found.group()
  # U+DC80..U+DCFF stand for one byte each (PEP 383); any other surrogate
  # (never from a file system) as the bytes Python would write for it.
  data = char.encode('utf-8', 'surrogateescape' if '\udc80' <= char <= '\udcff'
                     else 'surrogatepass')
  return ''.join(f'%{b:02X}' for b in data)


def encodable(text: str) -> bool:
  return not _SURROGATE.search(text)
