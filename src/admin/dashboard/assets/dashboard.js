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

  // Schedules: the UTC offset of the local date and time chosen, not of
  // today (a flip across a daylight-saving change would land an hour
  // off); filled as the time changes and again on submit. An offset the
  // admin typed is kept.
  var pad = function (n) { return (n < 10 ? "0" : "") + n; };
  var offsetAt = function (value) {
    // A date-time without an offset is local time (ECMAScript Date).
    var d = new Date(value);
    if (!value || isNaN(d.getTime())) { d = new Date(); }
    var m = -d.getTimezoneOffset();
    var sign = m < 0 ? "-" : "+";
    m = Math.abs(m);
    return sign + pad(Math.floor(m / 60)) + ":" + pad(m % 60);
  };
  document.querySelectorAll("input[data-tz]").forEach(function (tz) {
    var form = tz.form;
    var at = form && form.querySelector("input[type=datetime-local]");
    if (!at) { return; }
    var typed = false;
    var fill = function () {
      if (!typed) { tz.value = offsetAt(at.value); }
    };
    tz.addEventListener("input", function () { typed = true; });
    at.addEventListener("input", fill);
    at.addEventListener("change", fill);
    form.addEventListener("submit", fill);
    fill();
  });

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
