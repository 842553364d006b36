// The covidct page: send the dropped files to POST /api/v1/predict?cam=true and show the answer.
// Plain browser JavaScript, no libraries: the page must work on a hospital network with no internet.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("covidct-api-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("covidct-api-key", keyInput.value));

function authHeaders() {
  const key = keyInput.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function showModel() {
  const response = await fetch("/api/v1/model", { headers: authHeaders() });
  if (response.ok) {
    const model = await response.json();
    $("model").textContent = `Model: ${model.classes.join(" / ")}, threshold ${model.threshold.toFixed(3)}, ` +
      `${model.has_ood_guard ? "with" : "without"} the not-a-chest-CT guard.`;
  }
}

function showPreview(files) {
  const image = files.find((file) => /\.(png|jpe?g|bmp)$/i.test(file.name));
  $("preview-figure").hidden = !image;
  if (image) $("preview").src = URL.createObjectURL(image);
}

function showAnswer(answer, files) {
  const names = files.map((file) => file.name);
  $("result-title").textContent = names.length === 1 ? names[0] : `${names.length} files (${answer.slices.length} slices)`;
  $("not-ct").hidden = answer.in_distribution;
  $("not-ct").textContent = answer.in_distribution ? "" : `Not a chest CT slice: ${answer.message}`;
  $("answer").hidden = answer.prob_covid === null;
  if (answer.prob_covid !== null) {
    const positive = answer.prob_covid >= answer.threshold;
    $("label").textContent = answer.label;
    $("label").className = `label ${positive ? "positive" : "negative"}`;
    $("probability").textContent = `P(COVID) = ${answer.prob_covid.toFixed(3)}`;
    $("bar-fill").style.width = `${(100 * answer.prob_covid).toFixed(1)}%`;
    $("bar-threshold").style.left = `${(100 * answer.threshold).toFixed(1)}%`;
    $("threshold").textContent = `Threshold ${answer.threshold.toFixed(3)}: ${positive ? "at or above" : "below"} it.` +
      (answer.message ? ` ${answer.message}.` : "");
  }
  $("overlay-figure").hidden = !answer.overlay_png;
  if (answer.overlay_png) {
    $("overlay").src = `data:image/png;base64,${answer.overlay_png}`;
    $("overlay-caption").textContent = `Grad-CAM on ${answer.cam_slice}: regions that raised the COVID score`;
    if ($("preview-figure").hidden && answer.slice_png) {
      $("preview").src = `data:image/png;base64,${answer.slice_png}`;
      $("preview-figure").hidden = false;
    }
  }
  showSlices(answer);
  showFailures(answer.failures.map((failure) => `${failure.name}: ${failure.reason}`));
  $("result").hidden = false;
}

function showSlices(answer) {
  const table = $("slices");
  table.replaceChildren();
  $("slices-details").hidden = answer.slices.length < 2;
  const header = table.insertRow();
  for (const title of ["slice", "label", "P(COVID)"]) header.insertCell().textContent = title;
  for (const slice of answer.slices) {
    const row = table.insertRow();
    row.insertCell().textContent = slice.name;
    row.insertCell().textContent = slice.label;
    row.insertCell().textContent = slice.prob_covid === null ? "-" : slice.prob_covid.toFixed(3);
  }
}

function showFailures(lines) {
  $("failures").hidden = lines.length === 0;
  $("failures").replaceChildren(...lines.map((line) => Object.assign(document.createElement("p"), { textContent: line })));
}

async function predict(files) {
  if (files.length === 0) return;
  $("result").hidden = true;
  showPreview(files);
  setStatus(`Uploading ${files.length} file(s)…`);
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  try {
    const response = await fetch("/api/v1/predict?cam=true", { method: "POST", body: form, headers: authHeaders() });
    const body = await response.json();
    if (!response.ok) {
      setStatus(`Error ${response.status}: ${body.detail}`, true);
      return;
    }
    setStatus("");
    showAnswer(body, files);
  } catch (error) {
    setStatus(`The server could not be reached (${error.message}).`, true);
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  predict([...event.dataTransfer.files]);
});
$("files").addEventListener("change", (event) => predict([...event.target.files]));
keyInput.addEventListener("change", showModel);
showModel();
