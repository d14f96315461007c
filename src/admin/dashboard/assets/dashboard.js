// ponte dashboard: small progressive enhancements. Every page works
// without this script (forms post normally, a link reloads the page).
(function () {
  "use strict";

  // The login page: a session cookie marked Secure is only kept in a
  // secure context (https, or localhost); say so instead of failing quietly.
  var insecure = document.getElementById("insecure");
  if (insecure && window.isSecureContext === false) {
    insecure.hidden = false;
  }

  // Schedules: the browser's own UTC offset for the local time typed.
  var tz = document.querySelectorAll("input[data-tz]");
  if (tz.length) {
    var m = -new Date().getTimezoneOffset();
    var sign = m < 0 ? "-" : "+";
    m = Math.abs(m);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    var offset = sign + pad(Math.floor(m / 60)) + ":" + pad(m % 60);
    tz.forEach(function (el) { el.value = offset; });
  }

  // The import form: a chosen file is read into the text area.
  document.querySelectorAll("input[type=file][data-into]").forEach(function (input) {
    input.addEventListener("change", function () {
      var target = document.getElementById(input.getAttribute("data-into"));
      var file = input.files && input.files[0];
      if (!target || !file) { return; }
      var reader = new FileReader();
      reader.onload = function () { target.value = reader.result; };
      reader.readAsText(file);
    });
  });

  // Live sections: replaced with the server's fresh rendering, unless the
  // user is working inside one (keyboard focus there).
  var status = document.getElementById("live-status");
  if (!status || !window.EventSource) { return; }
  var events = new EventSource("/dashboard/events");
  events.addEventListener("update", function (e) {
    var sections = JSON.parse(e.data);
    Object.keys(sections).forEach(function (id) {
      var el = document.getElementById(id);
      if (el && !el.contains(document.activeElement)) {
        el.innerHTML = sections[id];
      }
    });
    status.textContent = "Live: updated at " + new Date().toLocaleTimeString() + ".";
  });
  events.addEventListener("signed-out", function () {
    events.close();
    window.location.assign("/dashboard/login");
  });
  events.onerror = function () {
    status.textContent = "Live updates paused; they resume by themselves, or reload the page.";
  };
})();
