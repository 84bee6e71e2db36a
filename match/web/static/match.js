/* match web UI: progressive enhancement only. Every page works without this file.
   Adds: drag and drop and paste of images, previews, and the live cutoff slider. */
(function () {
  "use strict";

  function showPreview(zone, file) {
    var img = zone.querySelector("img.preview");
    if (!img || !file || !/^image\//.test(file.type)) { return; }
    if (img.dataset.url) { URL.revokeObjectURL(img.dataset.url); }
    img.dataset.url = URL.createObjectURL(file);
    img.src = img.dataset.url;
    img.alt = "Preview of " + (file.name || "the pasted image");
    img.hidden = false;
  }

  function setFiles(zone, files) {
    var input = zone.querySelector('input[type="file"]');
    if (!input || !files || !files.length) { return; }
    var list = new DataTransfer();
    var many = input.multiple;
    for (var i = 0; i < files.length && (many || i < 1); i++) { list.items.add(files[i]); }
    input.files = list.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  var zones = Array.prototype.slice.call(document.querySelectorAll("[data-drop]"));
  zones.forEach(function (zone) {
    var input = zone.querySelector('input[type="file"]');
    var hint = zone.querySelector(".drop-hint");
    if (hint) { hint.removeAttribute("aria-hidden"); }
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function () { zone.classList.remove("dragging"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) {
        setFiles(zone, event.dataTransfer.files);
      }
    });
    if (input) {
      input.addEventListener("change", function () {
        if (input.files && input.files[0]) { showPreview(zone, input.files[0]); }
      });
    }
  });

  // Paste an image (e.g. a screenshot) into the first empty image field.
  document.addEventListener("paste", function (event) {
    if (!zones.length || !event.clipboardData) { return; }
    var files = [];
    for (var i = 0; i < event.clipboardData.items.length; i++) {
      var item = event.clipboardData.items[i];
      if (item.kind === "file" && /^image\//.test(item.type)) { files.push(item.getAsFile()); }
    }
    if (!files.length) { return; }
    event.preventDefault();
    var target = zones.filter(function (z) {
      var input = z.querySelector('input[type="file"]');
      return input && !(input.files && input.files.length);
    })[0] || zones[0];
    setFiles(target, files);
  });

  // The cutoff slider: the value and minimum score follow it at once; on a results page
  // the results beyond it hide at once, and the page is re-searched at the new cutoff.
  var slider = document.querySelector("[data-cutoff]");
  if (!slider) { return; }
  var valueOut = document.querySelector("[data-cutoff-value]");
  var minScore = document.querySelector("[data-min-score]");
  var timer = null;

  function results() { return document.querySelector("[data-results]"); }

  function filter(cutoff) {
    var section = results();
    if (!section) { return; }
    var shown = 0;
    section.querySelectorAll("[data-distance]").forEach(function (hit) {
      // A hit confirmed by local features is reported whatever its signature distance.
      var out = !hit.hasAttribute("data-confirmed") &&
        parseFloat(hit.getAttribute("data-distance")) > cutoff + 1e-9;
      hit.classList.toggle("filtered", out);
      if (!out) { shown++; }
    });
    var count = section.querySelector("[data-count]");
    if (count) { count.textContent = String(shown); }
  }

  function rerun() {
    var form = slider.form;
    var key = form && form.querySelector('input[name="q"]');
    if (!key || !results()) { return; }
    var params = new URLSearchParams();
    params.set("q", key.value);
    params.set("cutoff", slider.value);
    var all = form.querySelector('input[type="checkbox"][name="all"]');
    params.set("all", all && all.checked ? "1" : "0");
    var limit = form.querySelector('input[name="limit"]');
    if (limit && limit.value) { params.set("limit", limit.value); }
    var url = (results().getAttribute("data-url") || window.location.pathname) + "?" + params.toString();
    fetch(url, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-results]");
        var current = results();
        if (fresh && current && String(slider.value) === params.get("cutoff")) {
          current.replaceWith(fresh);
          history.replaceState(null, "", url);
        }
      })
      .catch(function () { /* keep the filtered view; the Search button still works */ });
  }

  slider.addEventListener("input", function () {
    var cutoff = parseFloat(slider.value);
    if (valueOut) { valueOut.textContent = cutoff.toFixed(2); }
    if (minScore) { minScore.textContent = String(Math.round((1 - cutoff) * 100)); }
    filter(cutoff);
    clearTimeout(timer);
    timer = setTimeout(rerun, 350);
  });
})();
