// payflow console: reload a page that asks for it (<body data-refresh="seconds">), unless the operator is
// typing into one of its fields or the tab is hidden. A file, not inline, so the CSP can stay script-src 'self'.
(function () {
  "use strict";
  var seconds = parseInt(document.body.getAttribute("data-refresh") || "", 10);
  if (!(seconds > 0)) {
    return;
  }
  function typing() {
    var active = document.activeElement;
    return active !== null && (active.tagName === "INPUT" || active.tagName === "TEXTAREA") && active.value !== "";
  }
  window.setInterval(function () {
    if (document.visibilityState === "visible" && !typing()) {
      window.location.reload();
    }
  }, seconds * 1000);
})();
