//! The canvas: zoom and pan, the image (tiled), the mask overlay, the brush, and compare.

use egui::{Color32, PointerButton, Pos2, Sense, Stroke, Vec2};

use super::app::{StudioApp, OVERLAY};
use super::textures::{ImageSource, MaskSource};
use crate::imaging::Rect;

/// Zoom limits in screen points per image pixel.
const MIN_ZOOM: f32 = 0.005;
const MAX_ZOOM: f32 = 64.0;
/// Image pixels of context kept around a region shown by [`CanvasState::show_region`].
pub const REVIEW_MARGIN: f32 = 48.0;

/// The painting tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// Adds to the mask.
    Brush,
    /// Removes from the mask.
    Eraser,
}

/// How the image maps to the canvas.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// Screen points per image pixel.
    pub zoom: f32,
    /// Position of the image's top-left corner relative to the canvas' top-left corner.
    pub offset: Vec2,
}

/// Canvas state kept between frames.
pub struct CanvasState {
    /// Current view.
    pub view: View,
    /// Fit the image on the next frame (after opening, or Ctrl+0).
    pub(super) fit_pending: bool,
    /// Set 100% on the next frame (Ctrl+1).
    pub(super) actual_pending: bool,
    /// Active tool.
    pub tool: Tool,
    /// Brush diameter in image pixels.
    pub brush: f32,
    /// Last painted point of the running stroke (image coordinates).
    last_paint: Option<[f32; 2]>,
    /// Divider position as a fraction of the canvas width, when the split view is on.
    pub split: Option<f32>,
    /// Image pixel under the pointer.
    pub cursor: Option<(usize, usize)>,
    /// Last canvas rectangle on screen.
    pub rect: egui::Rect,
}

impl Default for CanvasState {
    fn default() -> Self {
        Self {
            view: View {
                zoom: 1.0,
                offset: Vec2::ZERO,
            },
            fit_pending: true,
            actual_pending: false,
            tool: Tool::Brush,
            brush: 12.0,
            last_paint: None,
            split: None,
            cursor: None,
            rect: egui::Rect::NOTHING,
        }
    }
}

impl CanvasState {
    /// Fits the image into the canvas on the next frame.
    pub fn request_fit(&mut self) {
        self.fit_pending = true;
    }

    /// Shows the image at 100% (one image pixel per screen pixel) on the next frame.
    pub fn request_actual_size(&mut self) {
        self.actual_pending = true;
    }

    /// Multiplies the zoom by `factor`, keeping the image point under `anchor` (canvas-relative)
    /// in place.
    pub fn zoom_about(&mut self, factor: f32, anchor: Vec2) {
        let z = (self.view.zoom * factor).clamp(MIN_ZOOM, MAX_ZOOM);
        let k = z / self.view.zoom;
        self.view.offset = anchor - (anchor - self.view.offset) * k;
        self.view.zoom = z;
    }

    /// Centres the view on the image rectangle `r` (image pixels), zoomed so that it shows
    /// with [`REVIEW_MARGIN`] pixels of context around it: at least 100% (one screen point per
    /// image pixel) so that a speck is visible, at most 400%, and the current zoom where that
    /// already shows it so.
    pub fn show_region(&mut self, r: Rect) {
        let size = self.rect.size();
        if size.x < 1.0 || size.y < 1.0 {
            return;
        }
        let (w, h) = (
            r.width as f32 + 2.0 * REVIEW_MARGIN,
            r.height as f32 + 2.0 * REVIEW_MARGIN,
        );
        let fit = (size.x / w).min(size.y / h);
        let z = self.view.zoom;
        let zoom = if (1.0..=fit).contains(&z) {
            z
        } else {
            fit.clamp(1.0, 4.0)
        };
        let centre = Vec2::new(
            r.x as f32 + r.width as f32 * 0.5,
            r.y as f32 + r.height as f32 * 0.5,
        );
        self.view = View {
            zoom,
            offset: size * 0.5 - centre * zoom,
        };
        self.fit_pending = false;
        self.actual_pending = false;
    }

    /// Grows or shrinks the brush by one notch.
    pub fn resize_brush(&mut self, larger: bool) {
        let f = if larger { 1.25 } else { 0.8 };
        self.brush = (self.brush * f).round().clamp(1.0, 1000.0);
    }
}

impl StudioApp {
    /// The image point under screen position `p`.
    pub(super) fn screen_to_image(&self, p: Pos2) -> [f32; 2] {
        let v = self.canvas.view;
        let q = (p - self.canvas.rect.min - v.offset) / v.zoom;
        [q.x, q.y]
    }

    /// Draws the canvas and handles zoom, pan and painting.
    pub(super) fn canvas_ui(&mut self, ui: &mut egui::Ui) {
        let (rect, response) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
        // A name for screen readers and tests, without a tooltip chasing the brush.
        response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, "Image canvas"));
        self.canvas.rect = rect;
        let Some(doc) = &self.doc else {
            ui.painter().text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                "Open an image (Ctrl+O) or drop one here",
                egui::FontId::proportional(18.0),
                Color32::GRAY,
            );
            return;
        };
        let (iw, ih) = (doc.width() as f32, doc.height() as f32);
        let ppp = ui.ctx().pixels_per_point();

        if self.canvas.fit_pending && rect.width() > 1.0 && rect.height() > 1.0 {
            self.canvas.fit_pending = false;
            let z = ((rect.width() - 16.0) / iw)
                .min((rect.height() - 16.0) / ih)
                .clamp(MIN_ZOOM, 8.0);
            self.canvas.view = View {
                zoom: z,
                offset: (rect.size() - Vec2::new(iw, ih) * z) * 0.5,
            };
        }
        if self.canvas.actual_pending {
            self.canvas.actual_pending = false;
            let factor = (1.0 / ppp) / self.canvas.view.zoom;
            self.canvas.zoom_about(factor, rect.size() * 0.5);
        }

        // Wheel: zoom around the pointer. Raw wheel events, not egui's smoothed scroll, so one
        // notch is one step whatever the frame rate.
        if let Some(hover) = response.hover_pos() {
            let steps: f32 = ui.input(|i| {
                i.events
                    .iter()
                    .filter_map(|e| match e {
                        egui::Event::MouseWheel { unit, delta, .. } => Some(match unit {
                            egui::MouseWheelUnit::Point => delta.y / 50.0,
                            egui::MouseWheelUnit::Line => delta.y,
                            egui::MouseWheelUnit::Page => delta.y * 10.0,
                        }),
                        _ => None,
                    })
                    .sum()
            });
            if steps != 0.0 {
                self.canvas.zoom_about(1.2f32.powf(steps), hover - rect.min);
            }
        }

        // Pan: middle or right drag, or left drag while space is held.
        let (space, primary, delta) = ui.input(|i| {
            (
                i.key_down(egui::Key::Space),
                i.pointer.primary_down(),
                i.pointer.delta(),
            )
        });
        let pointer_on = response.is_pointer_button_down_on();
        let panning = pointer_on
            && (response.dragged_by(PointerButton::Middle)
                || response.dragged_by(PointerButton::Secondary)
                || (space && primary));
        if panning {
            self.canvas.view.offset += delta;
        }

        // Paint: left button on the canvas, space not held.
        // A quick click can press and release within one frame: paint that dot too.
        let clicked = response.clicked_by(PointerButton::Primary);
        let painting = (pointer_on && primary || clicked) && !space;
        if response.is_pointer_button_down_on() && primary {
            // Keep keyboard shortcuts (Enter, Space) away from whatever button had focus.
            ui.memory_mut(|m| {
                if let Some(id) = m.focused() {
                    m.surrender_focus(id);
                }
            });
        }
        if painting {
            self.paint_from_input(ui);
        } else {
            self.canvas.last_paint = None;
        }

        self.canvas.cursor = response.hover_pos().and_then(|p| {
            let q = self.screen_to_image(p);
            (q[0] >= 0.0 && q[1] >= 0.0 && q[0] < iw && q[1] < ih)
                .then_some((q[0] as usize, q[1] as usize))
        });

        self.paint_layers(ui, rect);

        if let Some(p) = response.hover_pos() {
            if !space && !panning {
                let r = self.canvas.brush * 0.5 * self.canvas.view.zoom;
                let painter = ui.painter_at(rect);
                painter.circle_stroke(
                    p,
                    r.max(1.0),
                    Stroke::new(2.5, Color32::from_black_alpha(160)),
                );
                painter.circle_stroke(p, r.max(1.0), Stroke::new(1.0, Color32::WHITE));
            }
        }
        let cursor = if space || panning {
            egui::CursorIcon::Grab
        } else {
            egui::CursorIcon::Crosshair
        };
        if response.hovered() {
            ui.ctx().set_cursor_icon(cursor);
        }

        self.split_divider(ui, rect);
    }

    /// Paints the segments between this frame's pointer positions.
    fn paint_from_input(&mut self, ui: &egui::Ui) {
        let mut points: Vec<Pos2> = ui.input(|i| {
            i.events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PointerMoved(p) => Some(*p),
                    egui::Event::PointerButton {
                        pos,
                        button: PointerButton::Primary,
                        pressed: true,
                        ..
                    } => Some(*pos),
                    _ => None,
                })
                .collect()
        });
        if points.is_empty() {
            if let Some(p) = ui.input(|i| i.pointer.latest_pos()) {
                points.push(p);
            }
        }
        let hole = self.canvas.tool == Tool::Brush;
        let radius = self.canvas.brush * 0.5;
        let image_points: Vec<[f32; 2]> = points.iter().map(|p| self.screen_to_image(*p)).collect();
        let Some(doc) = &mut self.doc else {
            return;
        };
        doc.begin_stroke();
        for q in image_points {
            let from = self.canvas.last_paint.unwrap_or(q);
            doc.paint_segment(from, q, radius, hole);
            self.canvas.last_paint = Some(q);
        }
    }

    /// Draws the image (or the original, or both around the divider) and the mask overlay.
    fn paint_layers(&mut self, ui: &egui::Ui, rect: egui::Rect) {
        let ctx = ui.ctx().clone();
        let painter = ui.painter_at(rect);
        let show_original = ui.input(|i| i.key_down(egui::Key::Tab));
        let running = self.job_running();
        let (Some(doc), Some(tex)) = (&self.doc, &mut self.textures) else {
            return;
        };
        let v = self.canvas.view;
        let image_rect = egui::Rect::from_min_size(
            rect.min + v.offset,
            Vec2::new(doc.width() as f32, doc.height() as f32) * v.zoom,
        );
        let ppi = v.zoom * ctx.pixels_per_point();
        // A checkerboard-free dark backdrop shows the image bounds for transparent scans.
        painter.rect_filled(image_rect, 0.0, Color32::from_gray(40));
        if show_original {
            tex.original.paint(
                &ctx,
                &painter,
                &ImageSource::new(doc.original()),
                image_rect,
                rect,
                ppi,
            );
        } else {
            let split_x = self.canvas.split.map(|f| rect.left() + f * rect.width());
            let right = match split_x {
                Some(x) => egui::Rect::from_min_max(egui::pos2(x, rect.top()), rect.max),
                None => rect,
            };
            tex.image.paint(
                &ctx,
                &painter,
                &ImageSource::new(doc.current()),
                image_rect,
                right,
                ppi,
            );
            if let Some(x) = split_x {
                let left = egui::Rect::from_min_max(rect.min, egui::pos2(x, rect.bottom()));
                tex.original.paint(
                    &ctx,
                    &painter,
                    &ImageSource::new(doc.original()),
                    image_rect,
                    left,
                    ppi,
                );
            }
            // The overlay hides while a job runs, so the streamed result is visible.
            if !running {
                tex.mask.paint(
                    &ctx,
                    &painter,
                    &MaskSource(doc.mask(), OVERLAY),
                    image_rect,
                    rect,
                    ppi,
                );
            }
        }
        if show_original {
            painter.text(
                rect.left_top() + Vec2::new(10.0, 10.0),
                egui::Align2::LEFT_TOP,
                "Original",
                egui::FontId::proportional(16.0),
                Color32::WHITE,
            );
        }
    }

    /// The draggable divider of the split view.
    fn split_divider(&mut self, ui: &mut egui::Ui, rect: egui::Rect) {
        let Some(f) = self.canvas.split else {
            return;
        };
        let x = rect.left() + f * rect.width();
        let handle = egui::Rect::from_min_max(
            egui::pos2(x - 5.0, rect.top()),
            egui::pos2(x + 5.0, rect.bottom()),
        );
        let resp = ui
            .interact(handle, ui.scope_id().with("split-divider"), Sense::drag())
            .on_hover_text("Drag to compare: original on the left, result on the right");
        if resp.dragged() {
            let dx = resp.drag_delta().x;
            self.canvas.split = Some(((x + dx - rect.left()) / rect.width()).clamp(0.0, 1.0));
        }
        if resp.hovered() || resp.dragged() {
            ui.ctx().set_cursor_icon(egui::CursorIcon::ResizeHorizontal);
        }
        let painter = ui.painter_at(rect);
        painter.line_segment(
            [egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())],
            Stroke::new(2.0, Color32::WHITE),
        );
        painter.text(
            egui::pos2(x - 8.0, rect.top() + 8.0),
            egui::Align2::RIGHT_TOP,
            "Original",
            egui::FontId::proportional(13.0),
            Color32::WHITE,
        );
        painter.text(
            egui::pos2(x + 8.0, rect.top() + 8.0),
            egui::Align2::LEFT_TOP,
            "Result",
            egui::FontId::proportional(13.0),
            Color32::WHITE,
        );
    }

    /// Ends a stroke once the button is up; returns true if the mask changed.
    pub(super) fn finish_stroke_if_released(&mut self, ctx: &egui::Context) -> bool {
        let down = ctx.input(|i| i.pointer.primary_down());
        match &mut self.doc {
            Some(doc) if doc.in_stroke() && !down => {
                self.canvas.last_paint = None;
                doc.end_stroke()
            }
            _ => false,
        }
    }
}
