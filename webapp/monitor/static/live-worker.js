/* The monitor's live stream (/emp/events), held in a dedicated worker.

   An EventSource is a fetch that never ends. Opened by the page itself, it keeps a headless
   browser's virtual time from advancing (`chromium --headless --virtual-time-budget=5000
   --screenshot`), so a plain screenshot of a page never finished. A worker's fetches do not
   hold the page's virtual time, and the page gets the same messages through postMessage.
   The page asks again ({url}) to reopen a stream the EventSource gave up on (emp.js). */
"use strict";
let source = null;
onmessage = (event) => {
  if (source && source.readyState !== EventSource.CLOSED) return;
  if (typeof EventSource === "undefined") { postMessage({kind: "unsupported"}); return; }
  const opened = source = new EventSource(event.data.url);
  opened.onopen = () => postMessage({kind: "open"});
  opened.onerror = () => postMessage(
    {kind: "error", data: opened.readyState === EventSource.CLOSED});
  opened.onmessage = (message) => postMessage({kind: "message", data: message.data});
};
