// fatlib book: small fixes for the offline pages (served from _static/fatlib.js).
//
// The ipywidgets embedder (@jupyter-widgets/html-manager 1.0) typesets widget labels with
// the MathJax 2 API, MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]), but the book
// serves MathJax 3. Once MathJax 3 has loaded (deferred scripts run before
// DOMContentLoaded; the widgets render on "load"), map that call onto typesetPromise.
(function () {
  function installHubShim() {
    var mj = window.MathJax;
    if (!mj || mj.Hub || !mj.version) {
      return;
    }
    mj.Hub = {
      Queue: function (command) {
        var element = Array.isArray(command) ? command[2] : undefined;
        var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
        ready.then(function () {
          return mj.typesetPromise ? mj.typesetPromise(element ? [element] : undefined) : null;
        }).catch(function (err) {
          console.warn("fatlib: MathJax could not typeset a widget label", err);
        });
      }
    };
  }
  installHubShim();
  document.addEventListener("DOMContentLoaded", installHubShim);
})();

// sphinx-book-theme 1.3 writes data-mode="" on a first visit, which pydata-sphinx-theme
// 0.17 reports as a console error ("Got invalid theme mode"); start in light mode instead
// (the figures are drawn on white). The theme switch still works and is remembered.
if (!document.documentElement.dataset.mode) {
  document.documentElement.dataset.mode = "light";
}
