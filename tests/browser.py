"""Renders a local HTML file in headless Chromium, for tests of the pages
the job writes (report.html, evaluate's report).

    from tests import browser
    page = browser.render('out/report.html')   # fails where there is no Chromium
    assert page.errors == [] and page.requests == []
    assert '<svg' in page.dom

`render(path, evaluate=(), timeout_s=60)` returns a Page:
- `dom`: the document's outerHTML once the load event has fired, and 0.2 s
  more (what the browser parsed, not the file's text);
- `errors`: console errors (console.error, console.assert), uncaught
  exceptions, browser log entries of level error (a resource that failed to
  load, a refused request, a CSP violation...) and failed loads, one string
  each;
- `requests`: every URL the page requested besides the file itself and
  `data:` URLs (a self-contained page requests none). Name resolution is
  turned off in the browser, so nothing leaves the machine either way;
- `console`: every console message as (level, text);
- `values`: the results of the JavaScript expressions in `evaluate`
  (JSON-serialisable values), in order, evaluated after the load.

How: Chromium's DevTools protocol over `--remote-debugging-pipe` (fds 3 and
4 of the browser, NUL-separated JSON), so no client library is needed.
`chromium()` finds the binary (Debian's `chromium` package; `make test`
installs it where missing), or the CHROMIUM environment variable.
"""
import dataclasses
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

# No network, no background traffic, no first-run UI; a fresh profile each time.
_FLAGS = ('--headless', '--remote-debugging-pipe', '--disable-gpu', '--no-first-run',
          '--no-default-browser-check', '--disable-extensions', '--disable-sync',
          '--disable-background-networking', '--disable-component-update',
          '--disable-default-apps', '--disable-dev-shm-usage', '--mute-audio',
          '--host-resolver-rules=MAP * ~NOTFOUND', '--window-size=1100,900')


@dataclasses.dataclass
class Page:
  dom: str
  errors: list
  requests: list
  console: list
  values: list


class BrowserError(Exception):
  """Chromium could not be started or did not answer in time."""


# Per chart (a figure with an SVG), the texts that run into each other or
# out of it: [chart:field, [[text, text] or ['outside', text], ...]] of the
# charts with any; [] when none does. Evaluated in the page (render).
TEXT_OVERLAPS = """Array.from(document.querySelectorAll('figure'))
  .filter(f => f.querySelector('svg')).map(f => {
  const svg = f.querySelector('svg'), width = svg.viewBox.baseVal.width;
  const boxes = Array.from(svg.querySelectorAll('text')).map(t => {
    const b = t.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height, t.textContent]; });
  const bad = [];
  boxes.forEach((a, i) => {
    if (a[0] < -0.5 || a[2] > width + 0.5) bad.push(['outside', a[4]]);
    boxes.slice(i + 1).forEach(b => {
      if (a[0] < b[2] - 0.5 && b[0] < a[2] - 0.5 && a[1] < b[3] - 0.5 && b[1] < a[3] - 0.5)
        bad.push([a[4], b[4]]); }); });
  return [f.dataset.chart + ':' + (f.dataset.field || ''), bad]; }).filter(x => x[1].length)"""


def chromium():
  """The Chromium binary, or None."""
  given = os.environ.get('CHROMIUM')
  if given:
    return given
  for name in ('chromium', 'chromium-browser', 'google-chrome'):
    path = shutil.which(name)
    if path:
      return path
  return None


def render(path, evaluate=(), timeout_s: float = 60.0) -> Page:
  """Loads the file `path` in headless Chromium (see the module's
  docstring). Fails the calling test where there is no Chromium (a test is
  never skipped for a missing dependency: `make test` installs Debian's
  chromium); raises BrowserError if it fails to answer."""
  binary = chromium()
  if binary is None:
    raise BrowserError('Chromium is not installed: run `make browser` (Debian\'s chromium '
                       'package) or set CHROMIUM to a Chromium binary')
  url = 'file://' + os.path.abspath(str(path))
  with tempfile.TemporaryDirectory(prefix='browser-profile-') as profile:
    with _Browser(binary, profile, timeout_s) as b:
      return b.load(url, list(evaluate))


def _high(fds) -> tuple:
  """The descriptors moved to numbers above 9, so that putting them on fds 3
  and 4 in the child never closes one of them."""
  moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
  for fd in fds:
    os.close(fd)
  return moved


class _Browser:
  def __init__(self, binary: str, profile: str, timeout_s: float):
    self._deadline = time.monotonic() + timeout_s
    commands_r, self._commands = _high(os.pipe())  # we write, the browser reads (its fd 3)
    self._replies, replies_w = _high(os.pipe())  # the browser writes (its fd 4), we read
    flags = list(_FLAGS) + [f'--user-data-dir={profile}']
    if hasattr(os, 'geteuid') and os.geteuid() == 0:
      flags.append('--no-sandbox')  # Chromium refuses to run as root with its sandbox
    # bash puts the pipes on fds 3 and 4, as --remote-debugging-pipe expects
    # (dash, Debian's sh, takes no fd numbers above 9).
    script = f'exec "$0" "$@" 3<&{commands_r} 4>&{replies_w} {commands_r}<&- {replies_w}>&-'
    self._stderr = tempfile.TemporaryFile()
    bash = shutil.which('bash') or '/bin/bash'
    self._process = subprocess.Popen([bash, '-c', script, binary, *flags, 'about:blank'],
                                     pass_fds=(commands_r, replies_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr)
    os.close(commands_r)
    os.close(replies_w)
    self._buffer = b''
    self._next_id = 0
    self._events = []

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    try:
      self._send('Browser.close')
    except Exception:  # pylint: disable=broad-except
      pass
    try:
      self._process.wait(10)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
    for fd in (self._commands, self._replies):
      try:
        os.close(fd)
      except OSError:
        pass
    self._stderr.close()
    return False

  def _fail(self, what: str):
    self._stderr.seek(0)
    tail = self._stderr.read()[-2000:].decode('utf-8', 'replace')
    raise BrowserError(f'{what}; Chromium\'s stderr ends: {tail}')

  def _send(self, method: str, params=None, session=None) -> int:
    self._next_id += 1
    message = {'id': self._next_id, 'method': method, 'params': params or {}}
    if session:
      message['sessionId'] = session
    data = json.dumps(message).encode() + b'\0'
    while data:
      data = data[os.write(self._commands, data):]
    return self._next_id

  def _receive(self):
    """The next message, or None at the deadline."""
    while b'\0' not in self._buffer:
      left = self._deadline - time.monotonic()
      if left <= 0:
        return None
      ready, _, _ = select.select([self._replies], [], [], left)
      if not ready:
        return None
      chunk = os.read(self._replies, 1 << 16)
      if not chunk:
        self._fail('Chromium closed its DevTools pipe')
      self._buffer += chunk
    message, self._buffer = self._buffer.split(b'\0', 1)
    return json.loads(message)

  def _call(self, method: str, params=None, session=None) -> dict:
    """Sends a command and waits for its reply; events meanwhile are kept."""
    call = self._send(method, params, session)
    while True:
      message = self._receive()
      if message is None:
        self._fail(f'no reply to {method} in time')
      if message.get('id') == call:
        if 'error' in message:
          raise BrowserError(f'{method}: {message["error"]}')
        return message.get('result', {})
      self._events.append(message)

  def _wait_for(self, method: str, session: str):
    while True:
      for i, event in enumerate(self._events):
        if event.get('method') == method and event.get('sessionId') == session:
          return self._events.pop(i)
      message = self._receive()
      if message is None:
        self._fail(f'no {method} in time')
      self._events.append(message)

  def load(self, url: str, expressions: list) -> Page:
    target = self._call('Target.createTarget', {'url': 'about:blank'})['targetId']
    session = self._call('Target.attachToTarget',
                         {'targetId': target, 'flatten': True})['sessionId']
    for domain in ('Page', 'Runtime', 'Log', 'Network'):
      self._call(f'{domain}.enable', session=session)
    self._events = []  # what about:blank did
    navigated = self._call('Page.navigate', {'url': url}, session=session)
    if navigated.get('errorText'):
      self._fail(f'{url} could not be opened: {navigated["errorText"]}')
    self._wait_for('Page.loadEventFired', session)
    # A moment for what comes after the load (late loads, their failures).
    self._call('Runtime.evaluate', {'expression': 'new Promise(r => setTimeout(r, 200))',
                                    'awaitPromise': True}, session=session)
    values = []
    for expression in expressions:
      result = self._call('Runtime.evaluate', {'expression': expression,
                                               'returnByValue': True}, session=session)
      if 'exceptionDetails' in result:
        raise BrowserError(f'{expression}: {result["exceptionDetails"]}')
      values.append(result['result'].get('value'))
    dom = self._call('Runtime.evaluate', {'expression': 'document.documentElement.outerHTML',
                                          'returnByValue': True},
                     session=session)['result']['value']
    return self._page(url, dom, values, session)

  def _page(self, url: str, dom: str, values: list, session: str) -> Page:
    errors, requests, console, urls = [], [], [], {}
    for event in self._events:
      if event.get('sessionId') != session:
        continue
      method, params = event.get('method'), event.get('params', {})
      if method == 'Runtime.consoleAPICalled':
        text = ' '.join(str(a.get('value', a.get('description', ''))) for a in params['args'])
        console.append((params['type'], text))
        if params['type'] in ('error', 'assert'):
          errors.append(f'console.{params["type"]}: {text}')
      elif method == 'Runtime.exceptionThrown':
        details = params['exceptionDetails']
        errors.append('exception: ' + details.get('exception', {}).get(
            'description', details.get('text', '')))
      elif method == 'Log.entryAdded':
        entry = params['entry']
        console.append((entry['level'], entry.get('text', '')))
        if entry['level'] == 'error':
          errors.append(f'log: {entry.get("text")} {entry.get("url", "")}'.strip())
      elif method == 'Network.requestWillBeSent':
        requested = urls[params.get('requestId')] = params['request']['url']
        if requested != url and not requested.startswith('data:'):
          requests.append(requested)
      elif method == 'Network.loadingFailed':
        errors.append(f'failed load: {urls.get(params.get("requestId"), "?")}: '
                      f'{params.get("errorText")} ({params.get("type", "")})')
    return Page(dom=dom, errors=errors, requests=requests, console=console, values=values)
