// Light progressive enhancement for the passerelle console; every page works without it.
// Sections marked data-refresh="SECONDS" are refreshed in place while the tab is visible,
// by fetching the same page and swapping the section of the same id. A section the user
// is working in (focus inside it) is left alone until the focus moves away.
(function () {
  "use strict";
  function refresh(section) {
    if (document.visibilityState !== "visible" || section.contains(document.activeElement)) return;
    fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok || response.redirected) throw new Error("status " + response.status);
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById(section.id);
        if (fresh && !section.contains(document.activeElement)) {
          section.innerHTML = fresh.innerHTML;
          section.setAttribute("data-refreshed", new Date().toISOString());
        }
      })
      .catch(function () { section.setAttribute("data-refresh-failed", new Date().toISOString()); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh][id]").forEach(function (section) {
      var seconds = Math.max(5, parseInt(section.getAttribute("data-refresh"), 10) || 15);
      window.setInterval(function () { refresh(section); }, seconds * 1000);
    });
    // The confirmation pages put the cursor in the reason; keep the page from jumping to it.
    var reason = document.getElementById("reason");
    if (reason) reason.focus({ preventScroll: true });
  });
})();
