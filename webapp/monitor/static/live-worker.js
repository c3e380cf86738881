/* The monitor's live stream (/emp/events), held in a worker: shared by every tab of the
   monitor where the browser has SharedWorker, else one dedicated worker per tab.

   An EventSource is a fetch that never ends. Opened by the page itself, it keeps a headless
   browser's virtual time from advancing (`chromium --headless --virtual-time-budget=5000
   --screenshot`), so a plain screenshot of a page never finished. A worker's fetches do not
   hold the page's virtual time, and the page gets the same messages through postMessage.
   Shared, because a browser opens at most six HTTP/1.1 connections to a host: with one
   stream per tab, a seventh monitor tab never loaded and every tab's reads and actions
   waited behind the streams. The page asks again ({url}) to reopen a stream the
   EventSource gave up on (emp.js), and says {bye} when it goes away. */
"use strict";
const streams = new Map();  // url -> {source, ports}: one EventSource per stream followed

function attach(port) {
  port.onmessage = (event) => {
    if (event.data.bye) {
      for (const [url, stream] of streams) {
        stream.ports.delete(port);
        if (!stream.ports.size) { if (stream.source) stream.source.close(); streams.delete(url); }
      }
      return;
    }
    const url = event.data.url;
    let stream = streams.get(url);
    if (!stream) streams.set(url, stream = {source: null, ports: new Set()});
    const joining = !stream.ports.has(port);
    stream.ports.add(port);
    const source = stream.source;
    if (source && source.readyState !== EventSource.CLOSED) {
      // A tab joining an open stream reads what it may have missed, as on any open.
      if (joining && source.readyState === EventSource.OPEN) port.postMessage({kind: "open"});
      return;
    }
    if (typeof EventSource === "undefined") { port.postMessage({kind: "unsupported"}); return; }
    const send = (message) => stream.ports.forEach((p) => p.postMessage(message));
    const opened = stream.source = new EventSource(url);
    opened.onopen = () => send({kind: "open"});
    opened.onerror = () => send({kind: "error", data: opened.readyState === EventSource.CLOSED});
    opened.onmessage = (message) => send({kind: "message", data: message.data});
  };
}

if (typeof SharedWorkerGlobalScope !== "undefined" && self instanceof SharedWorkerGlobalScope) {
  onconnect = (event) => attach(event.ports[0]);
} else {
  attach(self);  // a dedicated worker: the page is its only port
}
