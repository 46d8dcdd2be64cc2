// Live updates by a short poll: every data-refresh seconds, fetch this page again and swap
// in the new content of each element marked data-live (matched by id). The new HTML was
// escaped by the server like the first; it is parsed inert (DOMParser runs no script).
// No framework, no build step; the Content-Security-Policy allows this file only.
(function () {
  "use strict";
  var seconds = parseFloat(document.body.getAttribute("data-refresh") || "0");
  var toggle = document.getElementById("live-toggle");
  if (!(seconds > 0)) { return; }
  var paused = false;
  var busy = false;
  if (toggle) {
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "paused" : "live";
      toggle.classList.toggle("paused", paused);
    });
  }
  function refresh() {
    if (paused || busy || document.hidden) { return; }
    var active = document.activeElement;
    if (active && active.closest && active.closest("[data-live] form")) { return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Batchworks-Live": "1" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (old) {
          var next = fresh.getElementById(old.id);
          if (next) { old.replaceWith(document.importNode(next, true)); }
        });
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { busy = false; });
  }
  window.setInterval(refresh, seconds * 1000);
})();
