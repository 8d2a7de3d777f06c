// Progressive help for the console and the portal; every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // A page that shows a new secret puts the key's own page in the history instead of the
  // form's answer, so reloading or going back never shows (or re-posts) it again.
  var shown = document.querySelector("[data-replace-url]");
  if (shown && window.history && history.replaceState) {
    history.replaceState(null, "", shown.getAttribute("data-replace-url"));
  }
  if (shown) {
    // Leaving the page wipes the secrets, so a page the browser keeps for Back and
    // Forward holds none; a page restored that way is replaced by the one it stands for.
    window.addEventListener("pagehide", function () {
      document.querySelectorAll("input.secret").forEach(function (f) {
        f.value = "";
        f.removeAttribute("value");
      });
    });
    window.addEventListener("pageshow", function (e) {
      if (e.persisted) location.replace(shown.getAttribute("data-replace-url"));
    });
  }
  // Copy buttons; the page gives the word for "copied" in its language.
  document.querySelectorAll("button[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var field = document.getElementById(b.getAttribute("data-copy"));
      if (!field) return;
      field.select();
      var done = function () { b.textContent = b.getAttribute("data-copied") || b.textContent; };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(field.value).then(done, function () {
          document.execCommand("copy"); done();
        });
      } else {
        document.execCommand("copy"); done();
      }
    });
  });
  // Destructive buttons ask once more.
  document.querySelectorAll("button.danger").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.textContent.trim() + "?")) e.preventDefault();
    });
  });
});
